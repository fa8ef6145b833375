"""``laplacian``: manifold smoothing ``E' = (I + lam L)^-1 E`` on the token grid (MISSION.md 3.4).

**Graph.** The nodes are the ``N = H * W`` grid cells of one batch item; cell ``i`` is
joined to its 4 (``nb=4``: up, down, left, right) or 8 (``nb=8``: also the diagonals)
grid neighbours ``j``, with the weight

    w_ij = exp((cos(E_i, E_j) - 1) / sigma),   cos(E_i, E_j) = <E_i, E_j> / (|E_i| |E_j|)

computed from that batch item's own tokens (all ``C`` channels). ``cos`` lies in
``[-1, 1]``, so ``w`` lies in ``[exp(-2 / sigma), 1]``: similar neighbours are tightly
coupled and dissimilar ones (an object boundary) nearly cut. With ``sigma = 0.1``,
``cos = 0.9`` gives ``w = 0.37`` and ``cos = 0.5`` gives ``w = 0.007``. A zero token has
cosine 0 with everything (the norm is clamped at 1e-12).

**Border.** Only pairs inside the grid are edges: cells on the border have fewer
neighbours (degree 2 or 3 in a corner / on a side for ``nb=4``). There is no wrap-around
and no padding node, so ``L = D - W`` (``D`` = diagonal of weighted degrees) has zero row
sums: a constant grid is left unchanged by any ``lam``, up to the solver tolerance.

**System.** ``(I + lam L) X = E`` is solved for every batch item and channel at once.
``I + lam L`` is symmetric positive definite (``L`` is a weighted graph Laplacian, hence
positive semi-definite) with eigenvalues in ``[1, 1 + 2 lam max_degree]`` (``max_degree <=
nb`` since ``w <= 1``), so its condition number is at most ``1 + 2 nb lam`` (9 for the
defaults) whatever the tokens are.

**Solver.** Conjugate gradient, matrix-free: ``L x`` is applied by shifting the grid in
each of the ``nb / 2`` edge directions (each edge is stored once, as a
``[B, H - |dy|, W - |dx|]`` weight map, and contributes to both of its ends). Each of the
``B * C`` columns runs its own CG (its own step sizes alpha and beta, vectorised; no
Python loop over nodes or channels); a column stops updating once its relative residual
``||E - A X|| / ||E||`` (the recursively updated one) is at most ``tol``, and the solver
stops when every column has, or after ``iters`` iterations, starting from ``X = 0``.
Cost: about ``iterations x nb x N x C`` multiply-adds per batch item (plus
``nb / 2 x N x C`` once for the weights), all on the tokens' device; memory about six
copies of the tokens. Computation runs in float32 (float64 inputs stay float64; half
and bfloat16 inputs are upcast); the output has the input's dtype. ``lam = 0`` returns
the input tensor itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import RefineContext, Refiner
from .registry import register

#: Edge directions ``(dy, dx)``; each undirected edge ``(y, x) ~ (y + dy, x + dx)`` once.
OFFSETS: dict[int, tuple[tuple[int, int], ...]] = {
    4: ((0, 1), (1, 0)),
    8: ((0, 1), (1, 0), (1, 1), (1, -1)),
}


@register("laplacian")
@dataclass(frozen=True)
class Laplacian(Refiner):
    """Graph-Laplacian smoothing of the token grid, solved by conjugate gradient.

    Attributes:
        lam: smoothing strength lambda (>= 0; 0 = identity).
        sigma: width of the cosine kernel ``exp((cos - 1) / sigma)`` (> 0).
        nb: neighbourhood, 4 or 8.
        iters: maximum number of CG iterations (>= 1).
        tol: relative residual at which a column's CG stops (> 0).

    """

    limits: ClassVar[dict[str, tuple[float, float]]] = {
        "lam": (0.0, 1e4),
        "sigma": (1e-6, 100.0),
        "iters": (1, 10000),
        "tol": (1e-12, 1.0),
    }
    lam: float = 1.0
    sigma: float = 0.1
    nb: int = 4
    iters: int = 200
    tol: float = 1e-6

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}.")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be a kernel width > 0, got {self.sigma}.")
        if self.nb not in OFFSETS or isinstance(self.nb, bool):
            raise ValueError(f"nb must be 4 or 8 (neighbourhood), got {self.nb}.")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"iters must be an integer >= 1, got {self.iters}.")
        if not self.tol > 0:
            raise ValueError(f"tol must be a relative residual > 0, got {self.tol}.")

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """Solve ``(I + lam L) X = E`` (see the module docstring): ``[B, N, C] -> [B, N, C]``."""
        if self.lam == 0:
            return tokens
        x, _ = laplacian_smooth(tokens, grid, self.lam, self.sigma, int(self.nb), self.iters, self.tol)
        return x


def _cells(n: int, d: int) -> tuple[slice, slice]:
    """Slices of the first and second end of the edges with offset ``d`` along an axis of ``n``."""
    return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))


def edge_weights(grid_tokens: Tensor, sigma: float, nb: int = 4) -> list[Tensor]:
    """Edge weights of the grid graph, one ``[B, H - |dy|, W - |dx|]`` map per ``OFFSETS[nb]``.

    Args:
        grid_tokens: ``[B, H, W, C]`` float tokens.
        sigma: kernel width.
        nb: 4 or 8.

    Returns:
        ``maps[k][b, y', x']`` = ``w`` of the edge between the cells ``p`` and
        ``p + OFFSETS[nb][k]``, where ``p`` is the ``(y', x')`` cell of the first-end region
        (``y' + max(0, -dy)``, ``x' + max(0, -dx)`` in grid coordinates).

    """
    unit = F.normalize(grid_tokens, dim=-1, eps=1e-12)
    _, h, w, _ = unit.shape
    maps = []
    for dy, dx in OFFSETS[nb]:
        (ya, yb), (xa, xb) = _cells(h, dy), _cells(w, dx)
        cos = (unit[:, ya, xa] * unit[:, yb, xb]).sum(-1).clamp(-1.0, 1.0)
        maps.append(torch.exp((cos - 1.0) / sigma))
    return maps


def laplacian_apply(x: Tensor, weights: list[Tensor], lam: float) -> Tensor:
    """``(I + lam L) x`` for ``[B, H, W, C]`` ``x`` and the ``edge_weights`` maps (4 or 8 neighbours)."""
    _, h, w, _ = x.shape
    out = x.clone()
    nb = 2 * len(weights)
    for (dy, dx), wmap in zip(OFFSETS[nb], weights, strict=True):
        (ya, yb), (xa, xb) = _cells(h, dy), _cells(w, dx)
        flux = (lam * wmap).unsqueeze(-1) * (x[:, ya, xa] - x[:, yb, xb])
        out[:, ya, xa] += flux
        out[:, yb, xb] -= flux
    return out


def laplacian_smooth(
    tokens: Tensor,
    grid: tuple[int, int],
    lam: float,
    sigma: float,
    nb: int = 4,
    iters: int = 200,
    tol: float = 1e-6,
) -> tuple[Tensor, int]:
    """Solve ``(I + lam L) X = E`` for ``[B, N, C]`` tokens; return ``X`` and the CG iterations used."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h} x {w} grid.")
    rhs = tokens.reshape(b, h, w, c).to(torch.promote_types(tokens.dtype, torch.float32))
    weights = edge_weights(rhs, sigma, nb)
    x, used = conjugate_gradient(lambda v: laplacian_apply(v, weights, lam), rhs, iters, tol)
    return x.reshape(b, n, c).to(tokens.dtype), used


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], rhs: Tensor, iters: int, tol: float
) -> tuple[Tensor, int]:
    """Independent CG for every ``(batch, channel)`` column of ``[B, H, W, C]`` ``rhs``, from 0.

    ``apply`` must be a symmetric positive definite operator acting on each column
    separately. Columns whose relative residual is at most ``tol`` stop updating.

    Returns:
        The solution and the number of iterations run.

    """

    def dot(u: Tensor, v: Tensor) -> Tensor:
        return (u * v).sum(dim=(1, 2), keepdim=True)  # [B, 1, 1, C]

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = dot(r, r)
    limit = (tol**2) * rs  # squared: ||r||^2 <= tol^2 ||b||^2
    active = rs > limit
    used = 0
    while bool(active.any()) and used < iters:
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(active & (pap > 0), rs / pap.clamp_min(torch.finfo(pap.dtype).tiny), 0.0)
        x += alpha * p
        r -= alpha * ap
        rs_new = dot(r, r)
        beta = torch.where(active, rs_new / rs.clamp_min(torch.finfo(rs.dtype).tiny), 0.0)
        p = r + beta * p
        rs = torch.where(active, rs_new, rs)
        active = active & (rs_new > limit)
        used += 1
    return x, used
