"""``clip``: CLIP-guided token refinement in dimension-free forms (MISSION.md part 3.3).

SAM 3 tokens are 256-d and CLIP's patch embeddings 512-d (ViT-B/16), so the user's
``E * (1 + 0.3 * cos(E, F_clip))`` is undefined. Both modes below only let CLIP *weight*
SAM 3 tokens; no SAM 3 token is ever compared with a CLIP vector.

**CLIP features, once per view.** ``F = clip_patch_features(view)`` (the whole view
resized to CLIP's input, patch tokens of the last layer through ``post_layernorm`` and
``visual_projection``, MaskCLIP-style; see :mod:`ovearth.model.clip`) is a
``gh x gw x D`` grid (14 x 14 x 512 for ViT-B/16 at 224). It is upsampled bilinearly
(``align_corners=False``) to the token grid ``H x W`` and L2-normalised per position:
``f_i``, ``i = 1..N``. Both are kept in ``context.cache`` under the CLIP model id, so the
vision tower runs once per view whatever the number of prompt batches.

**mode=affinity** (default): ``A_ij = softmax_j(cos(f_i, f_j) / tau)`` over the ``j``
inside the ``(2 window + 1)^2`` grid window around ``i`` (clipped at the border; all
``N`` tokens when ``window = 0``), and ``E' = (1 - w) E + w A E``. Rows of ``A`` sum to
1, so a constant grid stays constant; ``A`` depends on the view only and is applied to
all ``B`` prompts of a batch as one batched matmul (cached per view, grid, ``tau`` and
``window``). Memory: ``A`` is a dense float32 ``N x N`` matrix in both cases (5184^2 x 4 B
= 107 MB at 72 x 72); the window is a mask (``-inf`` before the softmax, an ``N x N``
bool of 27 MB while building), which keeps the code one matmul at the cost of
multiplying zeros.

**mode=text**: needs the prompt names (the fusion stage). For prompt ``b`` with CLIP
text embedding ``t_b`` (prompt text as given, no template), ``s_i = cos(t_b, f_i)``,
min-max normalised over the grid, ``s~ = (s - min s) / (max s - min s)`` (0.5 everywhere
when the range is below ``1e-6``: a flat similarity carries no information), and
``E'_i = E_i * (1 + g (s~_i - mean_i s~))``. The factor has mean 1 over the grid, so the
tokens' overall scale is kept while tokens that look like the prompt to CLIP gain up to
``g`` and the others lose; it stays positive while ``g < 1``.

``w = 0`` (affinity) or ``g = 0`` (text) returns the input tensor itself without loading
CLIP. Computation is in float32 on the tokens' device (CLIP is moved there on first use);
the result has the tokens' dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..model.clip import DEFAULT_CLIP, clip_patch_features, clip_text_features, load_clip
from .base import RefineContext, Refiner
from .registry import register

#: Below this min-max range a prompt's similarity map counts as flat (factor 1).
FLAT_RANGE = 1e-6


@register("clip")
@dataclass(frozen=True)
class Clip(Refiner):
    """CLIP-guided refinement (see the module docstring for the formulas).

    Attributes:
        mode: ``"affinity"`` (CLIP patch affinity aggregates SAM 3 tokens) or ``"text"``
            (per-prompt CLIP text-to-patch similarity re-weights them).
        w: affinity mix weight in [0, 1] (0 = identity).
        tau: softmax temperature of the affinity (> 0; smaller = sharper).
        window: 0 for a global affinity, k > 0 for a (2k+1) x (2k+1) grid window.
        g: text-mode gain (>= 0; 0 = identity).
        model: CLIP hub id or ``save_pretrained`` directory.

    """

    limits: ClassVar[dict[str, tuple[float, float]]] = {
        "w": (0.0, 1.0),
        "tau": (1e-4, 100.0),
        "window": (0, 1000),
        "g": (0.0, 10.0),
    }
    mode: str = "affinity"
    w: float = 0.3
    tau: float = 0.07
    window: int = 0
    g: float = 0.3
    model: str = DEFAULT_CLIP

    def __post_init__(self) -> None:
        if self.mode not in ("affinity", "text"):
            raise ValueError(f"mode must be affinity or text, got '{self.mode}'.")
        if not 0 <= self.w <= 1:
            raise ValueError(f"w must be in [0, 1], got {self.w}.")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}.")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"window must be an integer >= 0, got {self.window}.")
        if not self.g >= 0:
            raise ValueError(f"g must be >= 0, got {self.g}.")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a CLIP hub id or directory.")

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """Apply the refinement (see the module docstring): ``[B, N, C] -> [B, N, C]``."""
        if (self.mode == "affinity" and self.w == 0) or (self.mode == "text" and self.g == 0):
            return tokens
        b, n, _ = tokens.shape
        if n != grid[0] * grid[1]:
            raise ValueError(f"{n} tokens do not fill a {grid[0]} x {grid[1]} grid.")
        if self.mode == "text" and context.prompts is None:
            raise InputError(
                "clip:mode=text needs the prompt names, which exist only at the fusion stage; "
                "use --refine-at fusion, or mode=affinity at the backbone stage."
            )
        if context.view is None:
            raise ValueError("The clip refiner needs the view's pixels (RefineContext.view).")
        features = grid_features(self.model, context, grid, tokens.device)
        x = tokens.float()
        if self.mode == "affinity":
            key = f"clip:{self.model}:affinity:{grid[0]}x{grid[1]}:tau={self.tau}:window={self.window}"
            if key not in context.cache:
                context.cache[key] = affinity_matrix(features, grid, self.tau, self.window)
            a = context.cache[key].to(tokens.device)
            return ((1 - self.w) * x + self.w * torch.matmul(a, x)).to(tokens.dtype)
        prompts = list(context.prompts or [])
        if len(prompts) != b:
            raise ValueError(f"clip:mode=text got {len(prompts)} prompt names for a batch of {b}.")
        text = prompt_features(self.model, context, prompts, tokens.device)
        factor = text_gain(text @ features.T, self.g)
        return (x * factor[..., None]).to(tokens.dtype)


def grid_features(
    model_id: str, context: RefineContext, grid: tuple[int, int], device: torch.device
) -> Tensor:
    """CLIP patch embeddings upsampled to ``grid`` and L2-normalised: ``[N, D]`` float32.

    The vision tower runs once per view (``context.cache``), whatever the grid.
    """
    key = f"clip:{model_id}:patches"
    if key not in context.cache:
        model, _ = load_clip(model_id, device)
        context.cache[key] = clip_patch_features(model, context.view)
    grid_key = f"clip:{model_id}:grid:{grid[0]}x{grid[1]}"
    if grid_key not in context.cache:
        patches = context.cache[key].to(device, torch.float32)  # [gh, gw, D]
        up = F.interpolate(patches.permute(2, 0, 1)[None], size=grid, mode="bilinear", align_corners=False)
        context.cache[grid_key] = F.normalize(up[0].flatten(1).T, dim=-1)
    return context.cache[grid_key].to(device)


def prompt_features(
    model_id: str, context: RefineContext, prompts: list[str], device: torch.device
) -> Tensor:
    """Normalised CLIP text embeddings ``[B, D]`` of the prompts (cached per prompt in the view)."""
    missing = [p for p in dict.fromkeys(prompts) if f"clip:{model_id}:text:{p}" not in context.cache]
    if missing:
        model, tokenizer = load_clip(model_id, device)
        for prompt, feature in zip(missing, clip_text_features(model, tokenizer, missing), strict=True):
            context.cache[f"clip:{model_id}:text:{prompt}"] = feature
    return torch.stack([context.cache[f"clip:{model_id}:text:{p}"] for p in prompts]).to(device)


def window_mask(grid: tuple[int, int], window: int, device: torch.device | None = None) -> Tensor:
    """``[N, N]`` bool: ``True`` where token ``j`` is within ``window`` rows and columns of ``i``."""
    h, w = grid
    index = torch.arange(h * w, device=device)
    rows, cols = index // w, index % w
    near_rows = (rows[:, None] - rows[None, :]).abs() <= window
    return near_rows & ((cols[:, None] - cols[None, :]).abs() <= window)


def affinity_matrix(features: Tensor, grid: tuple[int, int], tau: float, window: int = 0) -> Tensor:
    """``A = softmax_j(f_i . f_j / tau)`` over the window (all ``j`` if ``window = 0``).

    Args:
        features: ``[N, D]`` L2-normalised features.
        grid: ``(H, W)`` with ``H * W = N``.
        tau: temperature.
        window: 0 or the half-size k of a ``(2k+1)^2`` window.

    Returns:
        ``[N, N]`` float32, rows summing to 1, zero outside the window.

    """
    logits = features.float() @ features.float().T / tau
    if window > 0:
        logits.masked_fill_(~window_mask(grid, window, features.device), float("-inf"))
    return torch.softmax(logits, dim=-1)


def text_gain(similarity: Tensor, g: float) -> Tensor:
    """Per-prompt factor ``1 + g (s~ - mean s~)`` with ``s~`` the min-max normalised similarity.

    Args:
        similarity: ``[B, N]`` text-to-patch cosine similarities.
        g: gain.

    Returns:
        ``[B, N]`` factors with mean 1 per prompt (all 1 for a flat similarity).

    """
    s = similarity.float()
    low = s.amin(dim=1, keepdim=True)
    span = s.amax(dim=1, keepdim=True) - low
    flat = span < FLAT_RANGE
    scaled = torch.where(flat, torch.full_like(s, 0.5), (s - low) / torch.where(flat, 1.0, span))
    return 1 + g * (scaled - scaled.mean(dim=1, keepdim=True))
