"""The ``reference`` mode: SegEarth-OV3's per-name loop on the plain model forward.

For every view and every prompt name, the text is tokenized and encoded again and
``transformers.Sam3Model.forward`` runs on the cached vision features, as the
SegEarth-OV3 code does with Meta's processor; kept instances are fused one by one in a
Python loop. This is the oracle that the ``fast`` mode is tested against: slow, plain,
and independent of :mod:`ovearth.model.stages`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.load import LoadedModel
from ..model.tokenizer import tokenize
from .settings import SegmentSettings

TokenHook = Callable[[Tensor, tuple[int, int]], Tensor]


def reference_view_logits(
    loaded: LoadedModel,
    pixel_values: Tensor,
    size: tuple[int, int],
    names: list[str],
    settings: SegmentSettings,
    refine: TokenHook | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-name logits of one view, computed the plain way.

    Args:
        loaded: the model and tokenizer.
        pixel_values: ``[1, 3, S, S]`` preprocessed view.
        size: ``(h, w)`` of the view in image pixels.
        names: ``P`` prompt names.
        settings: thresholds and switches.
        refine: optional token refinement applied to the fusion encoder's output
            (through a forward hook, so the model's forward itself is untouched).

    Returns:
        ``([P, h, w] logits, [P] presence)``.

    """
    model = loaded.model
    vision = model.get_vision_features(pixel_values)
    logits, presences = [], []
    handle = None
    if refine is not None:
        grid = tuple(vision.fpn_hidden_states[-2].shape[-2:])

        def hook(module: torch.nn.Module, args: tuple, output: object) -> object:
            output.last_hidden_state = refine(output.last_hidden_state, grid)
            return output

        handle = model.detr_encoder.register_forward_hook(hook)
    try:
        for name in names:
            tokens = tokenize(loaded.tokenizer, [name])
            out = model(
                vision_embeds=vision,
                input_ids=tokens.input_ids.to(pixel_values.device),
                attention_mask=tokens.attention_mask.to(pixel_values.device),
            )
            presence = out.presence_logits[0, 0].sigmoid()
            scores = out.pred_logits[0].sigmoid() * presence
            logit = torch.zeros(size, dtype=torch.float32, device=pixel_values.device)
            if settings.use_instances:
                for j in range(scores.shape[0]):
                    if scores[j] > settings.confidence_threshold:
                        mask = F.interpolate(
                            out.pred_masks[:, j : j + 1], size=size, mode="bilinear", align_corners=False
                        )[0, 0].sigmoid()
                        logit = torch.maximum(logit, mask * scores[j])
            if settings.use_semantic:
                sem = F.interpolate(out.semantic_seg, size=size, mode="bilinear", align_corners=False)
                logit = torch.maximum(logit, sem[0, 0].sigmoid())
            if settings.use_presence:
                logit = logit * presence
            logits.append(logit)
            presences.append(presence)
    finally:
        if handle is not None:
            handle.remove()
    return torch.stack(logits), torch.stack(presences)
