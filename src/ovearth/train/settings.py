"""Settings of a training run (``ovearth train``), validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from .adapter import Trainable
from .losses import ATTENTION_KINDS


@dataclass(frozen=True)
class TrainSettings:
    """How to train an adapter (defaults: a LoRA run that fits a single GPU).

    Attributes:
        trainable: ``fusion``, ``fusion-last-N`` or ``lora`` (see :mod:`ovearth.train.adapter`).
        lora_rank: LoRA rank ``r``.
        lora_alpha: LoRA scale numerator (delta scaled by ``alpha / r``).
        steps: optimiser steps.
        batch: views per step; their gradients are accumulated one view at a time, so
            memory is that of one view whatever the batch.
        lr: AdamW learning rate after warm-up.
        weight_decay: AdamW decoupled weight decay.
        warmup: steps of linear warm-up from 0, then cosine decay to 0 at ``steps``.
        clip: gradient-norm clip (0: none).
        seed: seed of the view order, the LoRA initialisation and the contrastive sampling.
        seg, attn, contrast, boundary: weights of the combined loss.
        attention_kind: distance of the attention distillation (``kl``, ``l1``, ``topk``, ``rank``).
        tau: InfoNCE temperature of the mask-contrastive term.
        top_k: masks per prompt used by the mask-contrastive term.
        samples: positives and negatives sampled per mask.
        margin: cosine-distance margin of the boundary hinge.
        max_instances: kept queries per prompt that get mask targets (highest scores).
        pseudo_labels: train on the frozen model's confident predictions, not on labels.
        pseudo_threshold: class logit a pixel needs to get a pseudo-label.
        checkpointing: gradient checkpointing of the fusion layers and the mask decoder.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        save_every: steps between checkpoints (and at the end).

    """

    trainable: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    steps: int = 1000
    batch: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 50
    clip: float = 1.0
    seed: int = 0
    seg: float = 1.0
    attn: float = 0.1
    contrast: float = 0.05
    boundary: float = 0.02
    attention_kind: str = "kl"
    tau: float = 0.1
    top_k: int = 8
    samples: int = 64
    margin: float = 0.1
    max_instances: int = 16
    pseudo_labels: bool = False
    pseudo_threshold: float = 0.7
    checkpointing: bool = False
    amp: bool = True
    save_every: int = 100

    def __post_init__(self) -> None:
        self.parsed_trainable()
        for name in ("steps", "batch", "top_k", "samples", "max_instances", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value}.")
        for name in ("warmup", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be an integer >= 0, got {value}.")
        for name in ("lr", "tau"):
            if not 0 < getattr(self, name) < math.inf:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)}.")
        for name in ("weight_decay", "clip", "seg", "attn", "contrast", "boundary"):
            if not 0 <= getattr(self, name) < math.inf:
                raise InputError(f"{name} must be finite and >= 0, got {getattr(self, name)}.")
        if not any((self.seg, self.attn, self.contrast, self.boundary)):
            raise InputError("At least one loss weight (seg, attn, contrast, boundary) must be > 0.")
        if self.attention_kind not in ATTENTION_KINDS:
            raise InputError(
                f"attention_kind must be one of {', '.join(ATTENTION_KINDS)}, got '{self.attention_kind}'."
            )
        if not 0 < self.margin <= 2:
            raise InputError(f"margin must be in (0, 2], got {self.margin}.")
        if not 0 < self.pseudo_threshold <= 1:
            raise InputError(f"pseudo_threshold must be in (0, 1], got {self.pseudo_threshold}.")

    def parsed_trainable(self) -> Trainable:
        """The :class:`Trainable` these settings name."""
        return Trainable.parse(self.trainable, self.lora_rank, self.lora_alpha)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues (all but ``save_every``)."""
        return {k: v for k, v in self.to_dict().items() if k != "save_every"}
