"""Encoder-side self-supervision losses on SAM 3's patch tokens (MISSION.md part 2, routes 1 and 4).

Every loss takes the fusion encoder's patch tokens ``tokens`` ``[B, N, C]`` laid out
row-major on an ``h x w`` token grid (``N = h * w``) plus a signal the decoder already
produced (its image cross-attention, its own masks), which is always treated as a
fixed target: it is detached and receives no gradient. The losses are pure torch and
differentiable in ``tokens``; they compute in float32 (float64 stays float64, half and
bfloat16 are upcast) and return a scalar, averaged over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Variants of :class:`AttentionDistillation`.
ATTENTION_KINDS = ("kl", "l1", "topk", "rank")


def _grid_shape(tokens: Tensor, grid: tuple[int, int]) -> tuple[int, int, int]:
    """``(B, N, C)`` of ``[B, N, C]`` tokens, checked against ``grid = (h, w)``."""
    if tokens.dim() != 3:
        raise ValueError(f"tokens must be [B, N, C], got shape {tuple(tokens.shape)}.")
    b, n, c = tokens.shape
    if n != grid[0] * grid[1]:
        raise ValueError(f"{n} tokens do not fill a {grid[0]} x {grid[1]} grid.")
    return b, n, c


def _compute_dtype(tokens: Tensor) -> torch.dtype:
    return torch.promote_types(tokens.dtype, torch.float32)


def masks_on_grid(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Masks ``[B, M, H, W]`` (bool, or float probabilities) as bool ``[B, M, h, w]`` on the grid.

    A mask already at grid size is thresholded as is (``> 0.5``; bool masks pass
    unchanged). Otherwise it is resized with ``F.interpolate(mode="area")`` (the fraction
    of each grid cell's pixels inside the mask, adaptive average pooling for non-integer
    ratios) and a cell is inside when that fraction is ``> 0.5``. No gradient flows.
    """
    if masks.dim() != 4:
        raise ValueError(f"masks must be [B, M, H, W], got shape {tuple(masks.shape)}.")
    b, m, hh, ww = masks.shape
    h, w = grid
    if m == 0:
        return torch.zeros(b, 0, h, w, dtype=torch.bool, device=masks.device)
    masks = masks.detach()
    if (hh, ww) == (h, w):
        return masks if masks.dtype == torch.bool else masks > 0.5
    return F.interpolate(masks.float(), size=(h, w), mode="area") > 0.5


def mask_boundary(masks: Tensor, kernel: int = 3) -> Tensor:
    """Inner boundary ``mask XOR erode(mask)`` of bool masks ``[..., h, w]``: same shape, bool.

    ``erode`` is a ``kernel x kernel`` min-pool (stride 1) in which the zero-padded
    border counts as *outside*: a mask cell on the grid edge is always a boundary cell.
    Since ``erode(mask)`` is inside ``mask``, the XOR is the mask cells that have an
    outside cell (or the grid edge) within ``kernel // 2`` (Chebyshev distance).
    """
    h, w = masks.shape[-2:]
    r = kernel // 2
    flat = masks.reshape(-1, 1, h, w).float()
    outside = F.pad(1.0 - flat, (r, r, r, r), value=1.0)
    eroded = F.max_pool2d(outside, kernel, stride=1) < 0.5
    return masks ^ eroded.reshape(masks.shape)


class AttentionDistillation(nn.Module):
    """Make the patch-token energy follow the decoder's attention (route 1).

    With patch energy ``e_i = ||P_i||_2`` and aggregated decoder attention ``a_i >= 0``:

        p = e / sum_i e_i        (model distribution, gets the gradient)
        q = a / sum_i a_i        (target distribution, detached)

    ``kind`` selects the distance, all in ``[0, ...)`` and 0 when ``p = q``:

    * ``"kl"``: ``KL(q || p) = sum_i q_i (log max(q_i, eps) - log max(p_i, eps))``,
      range ``[0, inf)``. Direction: the attention is the target, and ``KL(target ||
      model)`` is mass-covering - it is large wherever the decoder looks (``q_i`` large)
      but the patch carries little energy (``p_i`` small), so every attended patch must
      carry energy, while energy on unattended patches is only penalised through the
      normalisation. (MISSION.md writes ``KL(e || w)``, the mode-seeking direction, which
      is satisfied by energy on a few attended patches and ignores the rest.) ``eps``:
      both distributions are clamped to ``eps`` inside the logs only; a ``q_i = 0`` term
      is exactly 0. A patch with ``p_i < eps`` gets no gradient from its own term (the
      clamp is flat there): with ``eps = 1e-6`` and ``N = 5184`` that is energy below
      0.5 % of the mean.
    * ``"l1"``: ``sum_i |p_i - q_i|``, range ``[0, 2]``.
    * ``"topk"``: with ``T`` the ``k`` patches of largest ``q`` (``min(k, N)``), the soft
      overlap ``1 - sum_{i in T} min(p_i, q_i) / sum_{i in T} q_i``, range ``[0, 1]``:
      0 once each top patch carries at least its attention share of the energy, 1 when
      none carries any. The selection ``T`` is a constant; the loss is differentiable in
      ``tokens`` except where ``p_i = q_i``.
    * ``"rank"``: a rank correlation is piecewise constant (zero gradient), so this is
      the differentiable proxy ``1 - pearson(p, q)``, the *linear* correlation of energy
      and attention over the patches (range ``[0, 2]``; 1 when either is constant). It
      is not a rank statistic: it is sensitive to the values, not only their order.

    Args:
        kind: one of ``ATTENTION_KINDS``.
        eps: clamp of the distributions inside the KL logs (> 0).
        k: number of top-attention patches for ``"topk"`` (>= 1).

    Raises:
        ValueError: for an unknown ``kind`` or out-of-range ``eps`` or ``k``.

    """

    def __init__(self, kind: str = "kl", eps: float = 1e-6, k: int = 64) -> None:
        super().__init__()
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"kind must be one of {', '.join(ATTENTION_KINDS)}, got '{kind}'.")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}.")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k}.")
        self.kind, self.eps, self.k = kind, eps, k

    def forward(self, tokens: Tensor, attention: Tensor) -> Tensor:
        """Loss for ``[B, N, C]`` tokens and ``[B, N]`` attention; mean over the batch.

        Raises:
            ValueError: on mismatched shapes, negative attention or an all-zero row.

        """
        if tokens.dim() != 3 or attention.shape != tokens.shape[:2]:
            raise ValueError(
                f"need tokens [B, N, C] and attention [B, N], got {tuple(tokens.shape)} "
                f"and {tuple(attention.shape)}."
            )
        dtype = _compute_dtype(tokens)
        tiny = torch.finfo(dtype).tiny
        a = attention.detach().to(dtype)
        if bool((a < 0).any()) or bool((a.sum(-1) <= 0).any()):
            raise ValueError("attention must be nonnegative with a positive sum on every row.")
        q = a / a.sum(-1, keepdim=True)
        e = torch.linalg.vector_norm(tokens.to(dtype), dim=-1)
        p = e / e.sum(-1, keepdim=True).clamp_min(tiny)
        if self.kind == "kl":
            loss = (q * (q.clamp_min(self.eps).log() - p.clamp_min(self.eps).log())).sum(-1)
        elif self.kind == "l1":
            loss = (p - q).abs().sum(-1)
        elif self.kind == "topk":
            top = q.topk(min(self.k, q.shape[-1]), dim=-1).indices
            qt = q.gather(-1, top)
            loss = 1.0 - torch.minimum(p.gather(-1, top), qt).sum(-1) / qt.sum(-1)
        else:
            pc, qc = p - p.mean(-1, keepdim=True), q - q.mean(-1, keepdim=True)
            norms = torch.linalg.vector_norm(pc, dim=-1) * torch.linalg.vector_norm(qc, dim=-1)
            loss = 1.0 - (pc * qc).sum(-1) / norms.clamp_min(tiny)
        return loss.mean()


class MaskContrastive(nn.Module):
    """Mask-aware patch InfoNCE on SAM 3's own confident masks (route 4).

    Masks ``[B, M, H, W]`` are brought to the token grid by :func:`masks_on_grid` (area
    resize, ``> 0.5``). Per batch item the ``top_k`` masks of highest score among those
    with at least one inside and one outside patch are used. For each used mask, with
    unit tokens ``u_i = P_i / ||P_i||``:

    * anchor ``z = normalize(mean_{i in mask} u_i)`` over *all* its patches;
    * positives: up to ``samples`` inside patches, negatives: up to ``samples`` outside
      patches, drawn uniformly without replacement (fewer when fewer exist), so the cost
      is ``O(top_k * samples * C)`` per item plus ``O(top_k * N * C)`` for the anchors -
      never ``O(N^2)``;
    * with ``s_j = cos(z, u_j) / tau``:
      ``L_mask = -mean_{j in pos} log(exp(s_j) / (exp(s_j) + sum_{n in neg} exp(s_n)))
      = mean_{j in pos} softplus(logsumexp_{n in neg} s_n - s_j)``.

    The loss is the mean of ``L_mask`` over all used masks of the batch; a zero tensor
    that still depends on ``tokens`` (zero gradient) when no mask qualifies. Masks and
    scores get no gradient. After each call ``last_counts`` holds a ``[K, 2]`` long
    tensor (positives, negatives sampled per used mask) and ``last_masks`` the ``[K, 2]``
    ``(batch, mask)`` indices of those masks.

    Sampling uses ``forward``'s ``generator`` if given; else the module's own generator
    seeded with ``seed`` (one stream across calls: reproducible, different per step);
    else torch's global RNG. Random keys are drawn on the generator's device (CPU for
    the seeded one) and moved to the tokens' device.

    Args:
        tau: temperature (> 0).
        top_k: masks used per batch item (>= 1).
        samples: positives and negatives drawn per mask (>= 1 each).
        seed: seed of the module's own generator, or None for the global RNG.

    Raises:
        ValueError: for out-of-range settings.

    """

    def __init__(self, tau: float = 0.1, top_k: int = 8, samples: int = 64, seed: int | None = None) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}.")
        for name, value in (("top_k", top_k), ("samples", samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}.")
        self.tau, self.top_k, self.samples = tau, top_k, samples
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.last_counts = torch.zeros(0, 2, dtype=torch.long)
        self.last_masks = torch.zeros(0, 2, dtype=torch.long)

    def forward(
        self,
        tokens: Tensor,
        grid: tuple[int, int],
        masks: Tensor,
        scores: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """InfoNCE for ``[B, N, C]`` tokens, ``[B, M, H, W]`` masks and ``[B, M]`` scores.

        Raises:
            ValueError: on mismatched shapes.

        """
        b, n, c = _grid_shape(tokens, grid)
        if masks.dim() != 4 or masks.shape[0] != b or scores.shape != masks.shape[:2]:
            raise ValueError(
                f"need masks [B, M, H, W] and scores [B, M] with B = {b}, got "
                f"{tuple(masks.shape)} and {tuple(scores.shape)}."
            )
        inside = masks_on_grid(masks, grid).flatten(2)  # [B, M, N]
        count = inside.sum(-1)
        ok = (count >= 1) & (count <= n - 1)
        k = min(self.top_k, masks.shape[1])
        zero = tokens.sum() * 0.0
        if k == 0 or not bool(ok.any()):
            self.last_counts = self.last_masks = torch.zeros(0, 2, dtype=torch.long)
            return zero
        rank = torch.where(ok, scores.detach().float(), -torch.inf)
        pick = rank.topk(k, dim=1).indices  # [B, k]
        used = ok.gather(1, pick)  # [B, k]
        sel = inside.gather(1, pick[..., None].expand(-1, -1, n))  # [B, k, N]

        unit = F.normalize(tokens.to(_compute_dtype(tokens)), dim=-1)
        anchor = F.normalize(torch.bmm(sel.to(unit.dtype), unit), dim=-1)  # [B, k, C]; mean up to scale
        gen = generator if generator is not None else self.generator
        device = gen.device if gen is not None else tokens.device
        keys = torch.rand(b, k, n, generator=gen, device=device).to(tokens.device)  # in [0, 1)
        s = min(self.samples, n)

        def draw(region: Tensor) -> tuple[Tensor, Tensor]:
            """Up to ``s`` random cells of ``region`` per mask: cosines / tau and validity."""
            val, idx = torch.where(region, keys, -1.0).topk(s, dim=-1)  # [B, k, s]
            picked = unit.gather(1, idx.reshape(b, k * s, 1).expand(-1, -1, c)).reshape(b, k, s, c)
            return (picked * anchor[:, :, None]).sum(-1) / self.tau, val >= 0

        pos, pos_ok = draw(sel)
        neg, neg_ok = draw(~sel)
        neg_lse = torch.where(neg_ok, neg, -1e4).logsumexp(-1, keepdim=True)  # finite fill: no NaN grads
        per_pos = F.softplus(neg_lse - pos) * pos_ok
        per_mask = per_pos.sum(-1) / pos_ok.sum(-1).clamp_min(1)
        self.last_counts = torch.stack([pos_ok.sum(-1)[used], neg_ok.sum(-1)[used]], -1).cpu()
        batch = torch.arange(b, device=pick.device)[:, None].expand(b, k)
        self.last_masks = torch.stack([batch[used], pick[used]], -1).cpu()
        return (per_mask * used).sum() / used.sum() + zero


class BoundaryHinge(nn.Module):
    """Keep mask-boundary patches distinct from their neighbourhood (route 4, boundary term).

    Boundary cells are the union over the ``M`` masks of :func:`mask_boundary`
    (``mask XOR erode(mask)``, ``kernel x kernel``, border = outside); masks not at grid
    size are resized by :func:`masks_on_grid`. For a boundary patch ``i`` with the
    other cells ``j`` of its ``kernel x kernel`` window that lie inside the grid (itself
    excluded, the window clipped at the border):

        m_i = mean_j P_j,   d_i = 1 - cos(P_i, m_i)  in [0, 2],
        L = mean_{i in boundary} relu(margin - d_i).

    Why a hinge: the form in MISSION.md, ``||P_i - m_i||^2`` *minimised*, pulls each
    boundary patch towards its neighbourhood mean - a smoothing step that blurs exactly
    the edges it is meant to keep sharp. The hinge instead pushes a boundary patch away
    from its neighbourhood mean until it is at least ``margin`` (cosine distance) away,
    and leaves it alone after that. ``L = 0`` when there is no boundary cell.

    Args:
        margin: required cosine distance (in ``(0, 2]``).
        kernel: odd window size >= 3.

    Raises:
        ValueError: for out-of-range settings.

    """

    def __init__(self, margin: float = 0.1, kernel: int = 3) -> None:
        super().__init__()
        if not 0 < margin <= 2:
            raise ValueError(f"margin must be in (0, 2], got {margin}.")
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 3, got {kernel}.")
        self.margin, self.kernel = margin, kernel

    def forward(self, tokens: Tensor, grid: tuple[int, int], masks: Tensor) -> Tensor:
        """Hinge for ``[B, N, C]`` tokens and ``[B, M, h, w]`` (or image-size) masks.

        Raises:
            ValueError: on mismatched shapes.

        """
        b, _, c = _grid_shape(tokens, grid)
        if masks.dim() != 4 or masks.shape[0] != b:
            raise ValueError(f"masks must be [B, M, H, W] with B = {b}, got {tuple(masks.shape)}.")
        h, w = grid
        boundary = mask_boundary(masks_on_grid(masks, grid), self.kernel).any(dim=1)  # [B, h, w]
        x = tokens.to(_compute_dtype(tokens)).reshape(b, h, w, c).permute(0, 3, 1, 2)
        r, area = self.kernel // 2, self.kernel**2
        window = F.avg_pool2d(x, self.kernel, stride=1, padding=r, count_include_pad=True) * area
        ones = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
        cells = F.avg_pool2d(ones, self.kernel, stride=1, padding=r, count_include_pad=True) * area
        neighbours = (window - x) / (cells - 1).clamp_min(1)
        d = 1.0 - F.cosine_similarity(x, neighbours, dim=1)  # [B, h, w]
        hinge = F.relu(self.margin - d) * boundary
        return hinge.sum() / boundary.sum().clamp_min(1)
