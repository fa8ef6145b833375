"""The first, unrefined decoder pass that two-pass refiners read."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..model.attention import DecoderAttention
from .base import RefineContext
from .registry import RefinePipeline


def first_pass(
    model: nn.Module, pipeline: RefinePipeline, context: RefineContext, decode: Callable[[], object]
) -> None:
    """Run an unrefined decoder pass and store what the pipeline's refiners read.

    Args:
        model: the SAM 3 model (its decoder layers are probed for attention).
        pipeline: the refiners (their ``first_pass`` says what they need).
        context: filled with ``presence_logits`` ``[B]`` and ``patch_weights``.
        decode: runs the decoder once and returns an object with ``presence_logits``
            (``[B]`` or ``[B, 1]``).

    """
    if "attention" not in pipeline.first_pass:  # the presence logit alone needs no probe
        context.presence_logits = decode().presence_logits.reshape(-1)
        return
    with DecoderAttention(model) as probe:
        out = decode()
    context.presence_logits = out.presence_logits.reshape(-1)
    context.patch_weights = {kind: probe.patch_weights(kind) for kind in ("queries", "presence")}
