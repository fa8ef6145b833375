"""The ``reference`` mode: SegEarth-OV3's per-name loop on the plain model forward.

For every view and every prompt name, the text is tokenized and encoded again and
``transformers.Sam3Model.forward`` runs on the cached vision features, as the
SegEarth-OV3 code does with Meta's processor; kept instances are fused one by one in a
Python loop. This is the oracle that the ``fast`` mode is tested against: slow, plain,
and independent of :mod:`ovearth.model.stages`.

Meta's prompt form (``settings.prompt_form == "meta"``): once per view,
``Sam3GeometryEncoder.forward`` runs on an empty box prompt (its own forward; only the
``roi_align`` pooling of boxes, which has no box to pool, is bypassed so that torchvision
is not needed), and its output is appended to each name's text features, which
``Sam3Model.forward`` then takes as ``text_embeds``: exactly how it combines text and
geometry prompts when boxes are given.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..model.load import LoadedModel
from ..model.tokenizer import tokenize
from ..refine import RefineContext, RefinePipeline, as_grid, as_tokens
from ..refine.first_pass import first_pass
from .instances import Instance, view_instances
from .settings import SegmentSettings


def reference_view_logits(
    loaded: LoadedModel,
    pixel_values: Tensor,
    crop: Tensor,
    names: list[str],
    settings: SegmentSettings,
    pipeline: RefinePipeline | None = None,
    sink: list[Instance] | None = None,
    name_class: list[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-name logits of one view, computed the plain way.

    Args:
        loaded: the model and tokenizer.
        pixel_values: ``[1, 3, S, S]`` preprocessed view.
        crop: ``[3, h, w]`` uint8 view (its size is the output size; refiners may read it).
        names: ``P`` prompt names.
        settings: thresholds, switches and where refinement applies.
        pipeline: optional token refinement. At ``backbone`` it is applied to the
            coarsest level of the vision features; at ``fusion`` through forward
            pre-hooks on the consumers it targets (``detr_decoder`` and/or
            ``mask_decoder``), so ``Sam3Model.forward`` itself is untouched.
        sink: when a list, each kept query's instance (view coordinates) is added.
        name_class: class index of each name (needed with ``sink``).

    Returns:
        ``([P, h, w] logits, [P] presence)``.

    """
    model = loaded.model
    size = (int(crop.shape[-2]), int(crop.shape[-1]))
    vision = model.get_vision_features(pixel_values)
    refining = pipeline is not None and bool(pipeline)
    cache: dict = {}
    if refining and settings.refine_at == "backbone":
        levels = list(vision.fpn_hidden_states)
        level = levels[2]  # 4x, 2x, 1x, 0.5x: the 1x level is what the fusion encoder reads
        grid = (int(level.shape[-2]), int(level.shape[-1]))
        levels[2] = as_grid(pipeline(as_tokens(level), grid, RefineContext(view=crop, cache=cache)), grid)
        vision.fpn_hidden_states = tuple(levels)
    geometry = geometry_prompt(model, vision) if settings.prompt_form == "meta" else None
    logits, presences = [], []
    for index, name in enumerate(names):
        handles = []
        if refining and settings.refine_at == "fusion":
            grid = tuple(vision.fpn_hidden_states[2].shape[-2:])
            context = RefineContext(prompts=[name], view=crop, cache=cache)
            if pipeline.first_pass:  # an unrefined forward first (slow and plain: this is the oracle)
                first_pass(
                    model,
                    pipeline,
                    context,
                    lambda name=name: name_forward(loaded, vision, name, geometry),
                )
            targets = {"decoder": [model.detr_decoder], "mask": [model.mask_decoder]}
            targets["both"] = targets["decoder"] + targets["mask"]
            key = {model.detr_decoder: "vision_features", model.mask_decoder: "encoder_hidden_states"}
            for module in targets[settings.refine_for]:
                handles.append(
                    module.register_forward_pre_hook(
                        _refining_hook(key[module], pipeline, grid, context), with_kwargs=True
                    )
                )
        try:
            found = None if sink is None else (sink, name_class[index])
            logit, presence = _one_name(loaded, vision, name, geometry, size, settings, found)
        finally:
            for handle in handles:
                handle.remove()
        logits.append(logit)
        presences.append(presence)
    return torch.stack(logits), torch.stack(presences)


def _refining_hook(argument: str, pipeline: RefinePipeline, grid: tuple, context: RefineContext):
    """A forward pre-hook replacing the keyword ``argument`` (image tokens) by its refinement."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        kwargs[argument] = pipeline(kwargs[argument], grid, context)
        return args, kwargs

    return hook


def geometry_prompt(model, vision) -> tuple[Tensor, Tensor]:
    """``Sam3GeometryEncoder.forward`` on an empty box prompt (Meta's extra prompt token).

    Args:
        model: the ``Sam3Model``.
        vision: its ``Sam3VisionEncoderOutput`` for ``V`` views.

    Returns:
        ``([V, 1, C] features, [V, 1] bool mask)``: the encoded CLS token.

    """
    levels = vision.fpn_hidden_states[:-1]  # what Sam3Model.forward hands the geometry encoder
    level = levels[-1]
    views, device = level.shape[0], level.device
    with _no_box_pooling(model.geometry_encoder):
        out = model.geometry_encoder(
            box_embeddings=level.new_zeros(views, 0, 4),
            box_mask=torch.zeros(views, 0, dtype=torch.bool, device=device),
            box_labels=torch.zeros(views, 0, dtype=torch.long, device=device),
            img_feats=levels,
            img_pos_embeds=vision.fpn_position_encoding[:-1],
        )
    return out.last_hidden_state, out.attention_mask


@contextlib.contextmanager
def _no_box_pooling(encoder: torch.nn.Module) -> Iterator[None]:
    """Encode zero boxes without ``torchvision.ops.roi_align`` (nothing to pool).

    ``_encode_boxes`` of an empty box set returns an empty ``[V, 0, C]`` embedding and
    its mask; this instance-level override returns exactly that.
    """

    def empty(boxes: Tensor, boxes_mask: Tensor, boxes_labels: Tensor, features: Tensor):
        if boxes.shape[1] != 0:
            raise ValueError("only the empty box prompt is supported")
        return boxes.new_zeros(boxes.shape[0], 0, encoder.hidden_size), boxes_mask

    encoder._encode_boxes = empty
    try:
        yield
    finally:
        del encoder._encode_boxes


def name_forward(loaded: LoadedModel, vision, name: str, geometry: tuple[Tensor, Tensor] | None):
    """``Sam3Model.forward`` for one prompt name on cached vision features.

    With ``geometry`` (Meta's form) the prompt is the name's text features followed by the
    geometry token, passed as ``text_embeds``; without it, the plain text-only forward.
    """
    device = vision.fpn_hidden_states[0].device
    tokens = tokenize(loaded.tokenizer, [name])
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    if geometry is None:
        return loaded.model(vision_embeds=vision, input_ids=ids, attention_mask=mask)
    text = loaded.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
    features, valid = geometry
    prompt = BaseModelOutputWithPooling(pooler_output=torch.cat([text, features], dim=1))
    return loaded.model(
        vision_embeds=vision, text_embeds=prompt, attention_mask=torch.cat([mask.bool(), valid], dim=1)
    )


def _one_name(
    loaded: LoadedModel,
    vision,
    name: str,
    geometry: tuple[Tensor, Tensor] | None,
    size: tuple[int, int],
    settings: SegmentSettings,
    found: tuple[list[Instance], int] | None = None,
) -> tuple[Tensor, Tensor]:
    """SegEarth-OV3's rules for one name on ``Sam3Model.forward``'s outputs.

    ``found``: ``(sink, class index)``; each kept query's instance is added to the sink.
    """
    device = vision.fpn_hidden_states[0].device
    out = name_forward(loaded, vision, name, geometry)
    presence = out.presence_logits[0, 0].sigmoid()
    scores = out.pred_logits[0].sigmoid() * presence
    logit = torch.zeros(size, dtype=torch.float32, device=device)
    if settings.use_instances:
        for j in range(scores.shape[0]):
            if scores[j] > settings.confidence_threshold:
                mask = F.interpolate(
                    out.pred_masks[:, j : j + 1], size=size, mode="bilinear", align_corners=False
                )
                logit = torch.maximum(logit, mask[0, 0].sigmoid() * scores[j])
                if found is not None:
                    found[0].extend(view_instances(mask[0], scores[j : j + 1], None, found[1], name))
    if settings.use_semantic:
        sem = F.interpolate(out.semantic_seg, size=size, mode="bilinear", align_corners=False)
        logit = torch.maximum(logit, sem[0, 0].sigmoid())
    if settings.use_presence:
        logit = logit * presence
    return logit, presence
