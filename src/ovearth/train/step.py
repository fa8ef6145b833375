"""One training view: SAM 3's staged forward with autograd, and the combined loss.

For one view and all ``P`` prompt names of the vocabulary:

1. backbone and FPN under ``torch.no_grad`` (frozen, nothing flows back to it);
2. fusion encoder (first block once per view, as at inference) -> tokens ``[P, N, C]``,
   the part that trains;
3. DETR decoder under :class:`~ovearth.model.attention.DecoderAttention` (its image
   cross-attention recorded on the side, without autograd), mask decoder and semantic
   head; frozen, but the gradient flows through them to the tokens;
4. the ``max_instances`` best-scoring queries of each name are the candidates; their
   instance masks ``[P, K, 4h, 4w]`` are computed; those scoring above the protocol's
   ``confidence_threshold`` are *kept*, as at inference.

Loss (:class:`~ovearth.train.segmentation_loss.CombinedLoss`):

* ``seg``: :class:`~ovearth.train.segmentation_loss.SegmentationLoss` on the class
  semantic logits (max over each class's names, resized bilinearly to the label),
  presence logits (max over names) and the candidates' instance masks matched to the
  label's instances (:mod:`ovearth.train.targets`), against the label map (or
  pseudo-labels); plus, as in DETR, a BCE on the candidates' query logits with target 1
  for matched and 0 for unmatched candidates (mean over candidates) - without it
  nothing holds the scores up, the kept set can empty, and the self-supervised terms
  below fall to 0 by starvation rather than by learning;
* ``attn``: attention distillation of the tokens' energy to the decoder's query
  attention (``patch_weights("queries")``);
* ``contrast`` and ``boundary``: on the view's own kept masks
  (``sigmoid(mask logit) > 0.5``), detached - SAM 3's own confident masks as targets
  (stop-gradient, recomputed at every step). Both are 0 when no kept mask has an
  inside and an outside; the ``masks`` column of ``losses.csv`` counts those that do.

The model stays in eval mode: dropout is off, so training optimises the same
deterministic forward that inference runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..model.attention import DecoderAttention
from ..model.features import TextFeatures
from ..model.stages import Sam3Stages
from ..segment.fusion import names_to_classes, resize
from .losses import AttentionDistillation, BoundaryHinge, MaskContrastive
from .segmentation_loss import CombinedLoss, SegmentationLoss
from .settings import TrainSettings
from .targets import class_masks, instance_pairs


class TrainStep:
    """Loss of one view for a model whose trainable part is set up (see ``prepare_trainable``).

    Args:
        stages: the model's stages (``checkpoint_fusion`` set as wanted).
        text: projected text features of the ``P`` names (computed without grad).
        name_class: class index of each name.
        num_classes: ``K``.
        settings: training settings (loss weights and parameters).
        confidence: the protocol's ``confidence_threshold`` for kept queries.
        ignore_index: label of ignored pixels.

    """

    def __init__(
        self,
        stages: Sam3Stages,
        text: TextFeatures,
        name_class: list[int],
        num_classes: int,
        settings: TrainSettings,
        confidence: float,
        ignore_index: int = 255,
    ) -> None:
        self.stages, self.text = stages, text
        self.name_class, self.num_classes = name_class, num_classes
        self.settings, self.confidence, self.ignore_index = settings, confidence, ignore_index
        s = settings
        self.seg = SegmentationLoss(ignore_index=ignore_index)
        self.attn = AttentionDistillation(kind=s.attention_kind)
        self.contrast = MaskContrastive(tau=s.tau, top_k=s.top_k, samples=s.samples, seed=s.seed)
        self.boundary = BoundaryHinge(margin=s.margin)
        self.combined = CombinedLoss(seg=s.seg, attn=s.attn, contrast=s.contrast, boundary=s.boundary)

    def __call__(self, pixels: Tensor, label: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Combined loss of one view.

        Args:
            pixels: ``[1, 3, S, S]`` preprocessed view.
            label: ``[H, W]`` long labels of the view (``ignore_index`` where unknown).

        Returns:
            ``(loss, parts)``: the scalar to back-propagate, and the detached unweighted
            terms plus ``masks``, the number of kept masks that are neither empty nor full
            (the own masks the encoder terms can use).

        """
        stages, s = self.stages, self.settings
        device = stages.device
        amp = s.amp and device.type == "cuda"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.no_grad():
                vision = stages.encode_images(pixels)
            fused = stages.fuse(vision, self.text, stages.first_self_attention(vision))
            with DecoderAttention(stages.model) as attention:
                decoded = stages.decode(fused)
            if s.checkpointing:
                pixel_embed = checkpoint(stages.pixel_embed, vision, fused, use_reentrant=False)
            else:
                pixel_embed = stages.pixel_embed(vision, fused)
            semantic = stages.semantic_logits(pixel_embed)  # [P, 4h, 4w]
            scores = decoded.scores()[0].detach()
            index = scores.topk(min(s.max_instances, scores.shape[1]), dim=1).indices  # [P, K] candidates
            chosen = decoded.queries.gather(1, index[..., None].expand(-1, -1, decoded.queries.shape[-1]))
            masks = stages.instance_logits(pixel_embed, chosen)  # [P, K, 4h, 4w]
        weight = scores.gather(1, index)
        kept = weight > self.confidence
        weight = weight * kept
        tokens, grid = fused.tokens, fused.grid
        own = (masks.detach().float().sigmoid() > 0.5) & kept[..., None, None]  # the model's own masks

        def seg() -> Tensor:
            k = self.num_classes
            classes = names_to_classes(semantic.float(), self.name_class, k)  # [K, 4h, 4w]
            logits = resize(classes, tuple(label.shape))[None]  # [1, K, H, W]
            presence = names_to_classes(decoded.presence_logits.float()[:, None, None], self.name_class, k)
            by_class = class_masks(label, k, tuple(masks.shape[-2:]), self.ignore_index)
            candidates = torch.ones_like(kept)
            pairs, targets, matched = instance_pairs(
                masks.float(), candidates, self.name_class, by_class, s.max_instances
            )
            presence = presence[:, 0, 0][None]  # [1, K]
            loss = self.seg(logits, label[None], pairs[None], targets[None], presence_logits=presence)
            query_logits = decoded.query_logits.float().gather(1, index)  # [P, K]
            return loss + F.binary_cross_entropy_with_logits(query_logits, matched.float())

        terms: dict[str, Callable[[], Tensor]] = {
            "seg": seg,
            "attn": lambda: self.attn(tokens, attention.patch_weights("queries").to(tokens.device)),
            "contrast": lambda: self.contrast(tokens, grid, own, weight),
            "boundary": lambda: self.boundary(tokens, grid, own),
        }
        loss, parts = self.combined(terms)
        area = own.flatten(2).sum(-1)
        parts["masks"] = ((area > 0) & (area < own[0, 0].numel())).sum().float()  # usable own masks
        return loss, parts
