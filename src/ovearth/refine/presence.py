"""``presence``: gate each prompt's tokens by the decoder's presence (MISSION.md part 2.2).

Training-free scalar form: ``E' = E * (1 - s + s * sigmoid(p))`` where ``p`` is the
prompt's presence logit from a first, unrefined decoder pass (``s = 1`` gives the
user's ``E * sigmoid(p)``; ``s = 0`` is the identity).

Cost: one extra DETR decoder pass per prompt (the backbone and the fusion encoder are
shared by both passes; the mask decoder runs once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .base import RefineContext, Refiner
from .registry import register


@register("presence")
@dataclass(frozen=True)
class Presence(Refiner):
    """Scale tokens by the first-pass presence probability.

    Attributes:
        s: strength in [0, 1] (0 = identity, 1 = ``E * sigmoid(p)``).

    """

    limits: ClassVar[dict[str, tuple[float, float]]] = {"s": (0.0, 1.0)}
    s: float = 1.0
    first_pass = "presence"

    def __post_init__(self) -> None:
        if not 0.0 <= self.s <= 1.0:
            raise ValueError(f"s must be in [0, 1], got {self.s}.")

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """``[B, N, C] -> [B, N, C]`` (see the module docstring)."""
        if self.s == 0:
            return tokens
        if context.presence_logits is None:
            raise ValueError(
                "the presence refiner needs a first decoder pass (it works at the fusion stage)."
            )
        gate = 1 - self.s + self.s * context.presence_logits.sigmoid()
        return tokens * gate.to(tokens.dtype)[:, None, None]
