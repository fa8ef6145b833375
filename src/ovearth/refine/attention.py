"""``attention``: re-weight tokens by the decoder's own attention (MISSION.md part 2.3).

The training-free form of query-guided re-weighting: a first, unrefined decoder pass
records the image cross-attention of every layer
(:class:`ovearth.model.attention.DecoderAttention`), aggregated to a patch weight
``w`` (``[B, N]``, sums to 1; ``by=queries``: mean over layers, object queries and heads,
the user's ``w_patch``; ``by=presence``: the presence token's row). Then

    E' = E * (1 + g * (w / mean(w) - 1)),   mean(w) = 1 / N,

so patches the decoder looks at more than average are amplified, the others damped
(``g = 0`` is the identity). Cost: one extra DETR decoder pass per prompt, plus the
attention probabilities recomputed on the side (``L x H x (Q + 1) x N`` per prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .base import RefineContext, Refiner
from .registry import register


@register("attention")
@dataclass(frozen=True)
class Attention(Refiner):
    """Scale tokens by first-pass decoder attention.

    Attributes:
        g: gain (0 = identity).
        by: ``"queries"`` or ``"presence"`` (which attention rows make ``w``).

    """

    limits: ClassVar[dict[str, tuple[float, float]]] = {"g": (0.0, 10.0)}
    g: float = 0.5
    by: str = "queries"
    first_pass = "attention"

    def __post_init__(self) -> None:
        if self.by not in ("queries", "presence"):
            raise ValueError(f"by must be queries or presence, got '{self.by}'.")

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """``[B, N, C] -> [B, N, C]`` (see the module docstring)."""
        if self.g == 0:
            return tokens
        weights = context.patch_weights.get(self.by)
        if weights is None:
            raise ValueError(
                "the attention refiner needs a first decoder pass (it works at the fusion stage)."
            )
        relative = weights * weights.shape[-1]  # w / mean(w)
        return tokens * (1 + self.g * (relative - 1)).to(tokens.dtype)[..., None]
