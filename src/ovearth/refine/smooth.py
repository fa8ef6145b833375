"""``smooth``: depthwise k x k mean filter over the token grid (MISSION.md part 3.1).

``S(E)[c, i, j] = mean of E[c, i', j']`` over the ``k x k`` window centred on
``(i, j)``, **clipped at the grid border**: windows that stick out average only the
cells inside the grid (``count_include_pad=False``), so a constant grid stays constant
up to the edges and no zero padding darkens the border tokens.

``mode=residual`` (the user's form): ``E' = E + a * S(E)`` (a = 0.2; note that it scales
smooth regions by ``1 + a``); ``mode=convex``: ``E' = (1 - a) E + a S(E)`` (scale
preserving). ``a = 0`` returns the input tensor itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from .base import RefineContext, Refiner, as_grid, as_tokens
from .registry import register


@register("smooth")
@dataclass(frozen=True)
class Smooth(Refiner):
    """Mean-filter smoothing of the token grid.

    Attributes:
        a: strength (0 = identity).
        k: odd window size.
        mode: ``"residual"`` (``E + a S(E)``) or ``"convex"`` (``(1 - a) E + a S(E)``).

    """

    limits: ClassVar[dict[str, tuple[float, float]]] = {"a": (0.0, 10.0), "k": (1, 63)}
    a: float = 0.2
    k: int = 3
    mode: str = "residual"

    def __post_init__(self) -> None:
        if self.k < 1 or self.k % 2 == 0:
            raise ValueError(f"k must be an odd window size >= 1, got {self.k}.")
        if self.mode not in ("residual", "convex"):
            raise ValueError(f"mode must be residual or convex, got '{self.mode}'.")

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """Apply the filter (see the module docstring): ``[B, N, C] -> [B, N, C]``."""
        if self.a == 0:
            return tokens
        smoothed = as_tokens(mean_filter(as_grid(tokens, grid), self.k))
        if self.mode == "residual":
            return tokens + self.a * smoothed
        return (1 - self.a) * tokens + self.a * smoothed


def mean_filter(x: Tensor, k: int) -> Tensor:
    """Depthwise ``k x k`` mean over ``[B, C, H, W]``, averaging only cells inside the grid."""
    return F.avg_pool2d(x, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
