"""The view engine: per-name logits of views (crops of an image), SegEarth-OV3's rules per view.

One :class:`ViewEngine` serves one vocabulary, settings and refiner pipeline on one model.
:meth:`ViewEngine.run` takes views that go through the backbone together and returns one
:class:`ViewOutput` per view; it averages nothing (that is :mod:`.accumulate`'s job) and
fills no caller's list.

Per view, per prompt name ``p`` (``fast`` mode; ``reference`` runs
:func:`~ovearth.segment.reference.reference_view_logits` instead, the oracle)::

    s_j   = sigmoid(query logit_j) * presence_p              kept when s_j > confidence
    inst  = max(0, max_j sigmoid(resize(mask_j)) * s_j)      over the kept queries
    sem   = sigmoid(resize(semantic map))
    logit = max(inst, sem) * presence_p                      (each term switchable)

The backbone runs once per view (``view_batch`` views at a time), the text once per engine
(cached), fusion / decoder / mask decoder for ``prompt_batch`` names at a time, instance
masks only for kept queries, and, with ``skip``, no mask decoder for names whose presence
is below the lowest class threshold (the provable skip).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..model.features import TextFeatures, VisionFeatures
from ..model.load import LoadedModel
from ..model.precision import precision_region
from ..model.preprocess import preprocess
from ..model.stages import Sam3Stages
from ..model.tokenizer import tokenize
from ..refine import RefineContext, RefinePipeline, as_grid, as_tokens
from ..refine.first_pass import first_pass
from .fusion import instance_max, instance_max_batched, kept_padded, resize, semantic_probs
from .instances import Instance, view_instances
from .reference import reference_view_logits
from .settings import ACCELERATOR_PROMPT_BATCH, ACCELERATOR_VIEW_BATCH, SegmentSettings
from .vocabulary import Vocabulary


@dataclass
class ViewOutput:
    """What one view gives.

    Attributes:
        logits: ``[P, h, w]`` per-name logits of the view (``[G, P, h, w]`` with ``G`` confidences).
        presence: ``[P]`` presence score per name.
        instances: with ``instances=True``, the view's kept objects in view coordinates.

    """

    logits: Tensor
    presence: Tensor
    instances: list[Instance] | None = None


@dataclass
class HeldImage:
    """Backbone features kept for one image (:meth:`Segmentor.set_image`, the explorer).

    Attributes:
        key: :func:`image_digest` of the image.
        views: window ``(y1, y2, x1, x2)`` -> that view's :class:`VisionFeatures`.

    """

    key: str
    views: dict[tuple, VisionFeatures] = field(default_factory=dict)


def image_digest(view: Tensor) -> str:
    """BLAKE2b of a ``[3, H, W]`` uint8 image's shape and bytes."""
    data = view.detach().cpu().contiguous().numpy()
    return hashlib.blake2b(repr(data.shape).encode() + data.tobytes(), digest_size=16).hexdigest()


class ViewEngine:
    """Per-view forward of one vocabulary, settings and refiner pipeline (see the module docstring).

    Args:
        loaded: the model and tokenizer.
        vocabulary: the classes and their prompt names (``P`` names).
        settings: checked settings.
        pipeline: the refiners (possibly empty).
        stages: the staged forward of ``loaded.model``.

    """

    def __init__(
        self,
        loaded: LoadedModel,
        vocabulary: Vocabulary,
        settings: SegmentSettings,
        pipeline: RefinePipeline,
        stages: Sam3Stages,
    ) -> None:
        self.loaded = loaded
        self.vocabulary = vocabulary
        self.settings = settings
        self.pipeline = pipeline
        self.stages = stages
        #: instance masks of all prompts of a batch at once, padded to the largest kept count
        #: (no per-prompt host syncs; accelerators). On CPU the per-prompt loop computes
        #: no padding, which measured faster.
        self.batched_instances = stages.device.type != "cpu"
        self._text: TextFeatures | None = None

    @property
    def prompt_batch(self) -> int:
        """Prompts per batch: the setting, else 1 on CPU and a larger batch on accelerators."""
        if self.settings.prompt_batch is not None:
            return self.settings.prompt_batch
        return 1 if self.stages.device.type == "cpu" else ACCELERATOR_PROMPT_BATCH

    @property
    def view_batch(self) -> int:
        """Views per backbone batch: the setting, else 1 on CPU and a larger batch on accelerators."""
        if self.settings.view_batch is not None:
            return self.settings.view_batch
        return 1 if self.stages.device.type == "cpu" else ACCELERATOR_VIEW_BATCH

    def autocast(self) -> AbstractContextManager[None]:
        """The precision region (:func:`~ovearth.model.precision.precision_region`).

        ``"float32"``: strict float32 (no TF32 on CUDA). ``"bfloat16"``: autocast over what
        SegEarth-OV3's ``torch.autocast("cuda", bfloat16)`` covers: backbone, text encoder,
        geometry encoder, fusion encoder, decoder, mask decoder, and the resize, sigmoid and
        score product of masks and semantic maps, which stay in the model's output dtype; the
        per-name maps accumulate in float32.
        """
        return precision_region(self.stages.device, self.settings.precision)

    @property
    def text_features(self) -> TextFeatures:
        """Projected text features of every prompt name, encoded once (under :meth:`autocast`) and cached."""
        if self._text is None:
            tokens = tokenize(self.loaded.tokenizer, self.vocabulary.names)
            device = self.stages.device
            with torch.inference_mode(), self.autocast():
                self._text = self.stages.encode_text(
                    tokens.input_ids.to(device), tokens.attention_mask.to(device)
                )
        return self._text

    @torch.inference_mode()
    def run(
        self,
        crops: list[Tensor],
        *,
        skip: bool = False,
        keys: list[tuple] | None = None,
        held: HeldImage | None = None,
        instances: bool = False,
        confidences: Sequence[float] | None = None,
    ) -> list[ViewOutput]:
        """Per-name logits of views run through the backbone together (no averaging).

        Args:
            crops: ``V`` views, each ``[3, h, w]`` uint8 (sizes may differ).
            skip: apply the provable skip (see :class:`SegmentSettings`); only valid
                when no pixel is covered by two views.
            keys: with ``held``, one key per crop (its window): features found in
                ``held`` are reused, the others computed and added (fast mode).
            held: kept backbone features (:class:`HeldImage`).
            instances: also return each view's kept objects (view coordinates).
            confidences: ``G`` confidence thresholds: the logits for each from one run of
                the decoders (fast mode); each equals the logits at that threshold (tested).

        Returns:
            One :class:`ViewOutput` per crop, in order.

        """
        size = self.stages.image_size
        dtype = self.stages.dtype
        device = self.stages.device
        crops = [crop.to(device) for crop in crops]
        sinks: list[list[Instance] | None] = [[] if instances else None for _ in crops]
        with self.autocast():
            if self.settings.mode == "reference":
                results = [
                    reference_view_logits(
                        self.loaded,
                        preprocess(crop, size, dtype)[None],
                        crop,
                        self.vocabulary.names,
                        self.settings,
                        self.pipeline,
                        sink,
                        self.vocabulary.name_class,
                    )
                    for crop, sink in zip(crops, sinks, strict=True)
                ]
            else:
                use_held = held is not None and keys is not None
                todo = [i for i in range(len(crops)) if not (use_held and keys[i] in held.views)]
                computed: dict[int, VisionFeatures] = {}
                if todo:
                    vision = self.stages.encode_images(
                        torch.stack([preprocess(crops[i], size, dtype) for i in todo])
                    )
                    computed = {i: vision.view(j) for j, i in enumerate(todo)}
                    if use_held:
                        held.views.update({keys[i]: features for i, features in computed.items()})
                views = [computed[i] if i in computed else held.views[keys[i]] for i in range(len(crops))]
                results = [
                    self._fast(v, crop, skip, sink, confidences)
                    for v, crop, sink in zip(views, crops, sinks, strict=True)
                ]
        pairs = zip(results, sinks, strict=True)
        return [ViewOutput(logits, presence, sink) for (logits, presence), sink in pairs]

    def _fast(
        self,
        vision: VisionFeatures,
        crop: Tensor,
        skip: bool = False,
        sink: list[Instance] | None = None,
        confidences: Sequence[float] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All names of one view, in prompt batches: ``([P, h, w], [P])``, or ``[G, P, h, w]`` logits."""
        s = self.settings
        stages = self.stages
        size = (int(crop.shape[-2]), int(crop.shape[-1]))
        names = self.vocabulary.names
        grid = (s.confidence_threshold,) if confidences is None else tuple(confidences)
        cache: dict = {}  # per-view scratch space shared by the refiners
        if self.pipeline and s.refine_at == "backbone":
            vision = refine_backbone(stages, vision, self.pipeline, RefineContext(view=crop, cache=cache))
        text = self.text_features
        shared = stages.first_self_attention(vision)  # the prompt-free first block, once per view
        num_names = text.features.shape[0]
        batch = self.prompt_batch
        logits = torch.zeros(len(grid), num_names, *size, device=stages.device)
        presence_all = torch.zeros(num_names, device=stages.device)
        for start in range(0, num_names, batch):
            chunk = slice(start, min(start + batch, num_names))
            fused = stages.fuse(vision, text.select(chunk), shared)
            for_decoder = for_mask = fused.tokens
            if self.pipeline and s.refine_at == "fusion":
                context = RefineContext(prompts=names[chunk], view=crop, cache=cache)
                if self.pipeline.first_pass:
                    first_pass(stages.model, self.pipeline, context, lambda fused=fused: stages.decode(fused))
                refined = self.pipeline(fused.tokens, fused.grid, context)
                for_decoder = refined if s.refine_for in ("both", "decoder") else fused.tokens
                for_mask = refined if s.refine_for in ("both", "mask") else fused.tokens
            decoded = stages.decode(fused, for_decoder)
            scores, presence = decoded.scores()
            presence_all[chunk] = presence
            # prompts whose mask decoder can matter (all, unless a provable skip applies)
            rows = (
                (presence >= s.lowest_prob_thd).nonzero()[:, 0]
                if skip
                else torch.arange(len(presence), device=presence.device)
            )
            keeps = [self._kept(scores, presence, c, skip) for c in grid]
            if len(rows) == 0 or not (s.use_semantic or any(keep.any() for keep in keeps)):
                continue
            every = len(rows) == len(presence)
            pixel_embed = stages.pixel_embed(
                vision, fused if every else fused.select(rows), for_mask if every else for_mask[rows]
            )
            semantic = semantic_probs(stages.semantic_logits(pixel_embed), size) if s.use_semantic else None
            for g, keep in enumerate(keeps):
                term = torch.zeros(len(presence), *size, device=stages.device)
                self._instance_term(term, pixel_embed, decoded, scores, keep, rows, start, size, sink)
                if semantic is not None:
                    term[rows] = torch.maximum(term[rows], semantic)
                if s.use_presence:
                    term = term * presence[:, None, None].float()
                logits[g, chunk] = term
        return (logits[0] if confidences is None else logits), presence_all

    def _kept(self, scores: Tensor, presence: Tensor, confidence: float, skip: bool) -> Tensor:
        """``[B, Q]`` bool: the queries kept at ``confidence`` (none without the instance term)."""
        s = self.settings
        keep = scores > confidence if s.use_instances else torch.zeros_like(scores, dtype=bool)
        if skip:
            keep[presence < s.lowest_prob_thd] = False
        return keep

    def _instance_term(
        self,
        term: Tensor,
        pixel_embed: Tensor,
        decoded: Any,
        scores: Tensor,
        keep: Tensor,
        rows: Tensor,
        start: int,
        size: tuple[int, int],
        sink: list[Instance] | None,
    ) -> None:
        """Write the instance term of the ``keep`` queries of each prompt into ``term [B, h, w]``."""
        stages = self.stages
        kept_any = keep.any(dim=1).tolist()
        if not any(kept_any):
            return
        if self.batched_instances:  # padded to the largest count: few syncs
            index, weight = kept_padded(scores[rows], keep[rows])
            selected = decoded.queries[rows]
            queries = selected.gather(1, index[..., None].expand(-1, -1, selected.shape[-1]))
            masks = stages.instance_logits(pixel_embed, queries)
            term[rows] = instance_max_batched(masks, weight, size)
            if sink is not None:
                for j, b in enumerate(rows.tolist()):
                    n = int((weight[j] > 0).sum())
                    sink.extend(self._instances(resize(masks[j, :n], size), weight[j, :n], start + b))
            return
        for j, b in enumerate(rows.tolist()):  # a loop over prompts, not instances
            if kept_any[b]:
                masks = stages.instance_logits(pixel_embed[j], decoded.queries[b][keep[b]])
                term[b] = instance_max(masks, scores[b][keep[b]], size)
                if sink is not None:
                    sink.extend(self._instances(resize(masks, size), scores[b][keep[b]], start + b))

    def _instances(self, mask_logits: Tensor, scores: Tensor, name_index: int) -> list[Instance]:
        """Instances of name ``name_index`` in a view from its kept masks ``[K, h, w]`` and scores."""
        vocabulary = self.vocabulary
        return view_instances(
            mask_logits, scores, None, vocabulary.name_class[name_index], vocabulary.names[name_index]
        )


def refine_backbone(
    stages: Sam3Stages, vision: VisionFeatures, pipeline: RefinePipeline, context: RefineContext
) -> VisionFeatures:
    """Refine the coarsest backbone level ``[V, C, h, w]``.

    Its readers (the fusion encoder and, in Meta's prompt form, the geometry encoder)
    all see the refined tokens.
    """
    level = vision.levels[-1]
    refined = as_grid(pipeline(as_tokens(level), tuple(level.shape[-2:]), context), tuple(level.shape[-2:]))
    return stages.with_coarsest(vision, refined)
