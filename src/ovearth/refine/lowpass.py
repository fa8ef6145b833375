"""``lowpass``: keep a disc of spatial frequencies around zero (MISSION.md part 3.2).

Per channel ``c`` of the ``H x W`` token grid::

    F = fft2(E[c])                                      # unshifted spectrum, H x W
    fy[u] = fftfreq(H)[u] * H,  fx[v] = fftfreq(W)[v] * W   # integer indices in [-H/2, H/2)
    M[u, v] = 1  if sqrt(fy[u]^2 + fx[v]^2) <= r  else 0
    E_lp[c] = Re(ifft2(F * M))
    E'[c] = (1 - b) E[c] + b E_lp[c]

``fy`` and ``fx`` are the *wrap-around* distances of each spectrum index to the zero
frequency: index ``u`` stands for frequency ``u`` if ``u < H/2`` and ``u - H`` otherwise,
so the disc is centred on the zero frequency and is symmetric under ``(u, v) -> (-u, -v)``
(the mask is Hermitian, the inverse FFT of a real grid stays real up to rounding, and the
real part only drops that rounding). ``r`` is in frequency-index units (cycles per grid
side): ``r = 12`` on the 72 x 72 grid keeps wavelengths down to about 6 cells. ``r >=
sqrt((H/2)^2 + (W/2)^2)`` keeps every frequency (the identity); ``r = 0`` keeps only the
mean of each channel. Non-square grids use their own ``H`` and ``W``.

**Why not a disc around index (H/2, W/2).** In ``torch.fft.fft2``'s (and numpy's) layout
index ``(0, 0)`` is the zero frequency (the channel mean) and index ``(H/2, W/2)`` is the
Nyquist corner, the checkerboard ``(-1)^(i+j)``. A disc centred on ``(H/2, W/2)`` of the
*unshifted* spectrum, as in the sketch of MISSION.md, therefore keeps the HIGH
frequencies and removes the mean: it is a high-pass filter. Centring on ``(H/2, W/2)`` is
only right after ``fftshift``; the wrap-around distance used here is the equivalent
without shifting (``tests/test_refine_filters.py`` computes the counter-example).

**Edges.** The DFT treats the grid as periodic: the top row neighbours the bottom row and
the left column the right column, so a strong difference between opposite borders
leaks a little into both (ringing near the border). No padding or windowing is applied.

The FFT runs on the tokens' device in float32 (float64 inputs stay float64; half and
bfloat16 inputs are upcast); the output has the input's dtype. ``b = 0`` returns the
input tensor itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import RefineContext, Refiner, as_grid, as_tokens
from .registry import register


@register("lowpass")
@dataclass(frozen=True)
class LowPass(Refiner):
    """FFT low-pass of the token grid, mixed with the input.

    Attributes:
        r: radius of the kept disc around the zero frequency, in frequency-index units
            (>= 0).
        b: mix in ``[0, 1]``: ``E' = (1 - b) E + b E_lp`` (0 = identity).

    """

    limits: ClassVar[dict[str, tuple[float, float]]] = {"r": (0.0, 1000.0), "b": (0.0, 1.0)}
    r: float = 12
    b: float = 0.2

    def __post_init__(self) -> None:
        if not self.r >= 0:
            raise ValueError(f"r must be a radius >= 0 in frequency-index units, got {self.r}.")
        if not 0 <= self.b <= 1:
            raise ValueError(f"b must be a mix weight in [0, 1], got {self.b}.")

    def __call__(self, tokens: Tensor, grid: tuple[int, int], context: RefineContext) -> Tensor:
        """Apply the filter (see the module docstring): ``[B, N, C] -> [B, N, C]``."""
        if self.b == 0:
            return tokens
        x = as_grid(tokens, grid)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        low = lowpass_filter(x, self.r)
        return as_tokens((1 - self.b) * x + self.b * low).to(tokens.dtype)


def disc_mask(grid: tuple[int, int], r: float, device: torch.device | str | None = None) -> Tensor:
    """``[H, W]`` bool mask of the unshifted ``fft2`` spectrum: wrap-around distance to zero <= r."""
    h, w = grid
    # fftfreq(n) * n is an integer up to rounding (3 / 10 * 10 = 3.0000000000000004): round it
    fy = (torch.fft.fftfreq(h, device=device, dtype=torch.float64) * h).round()
    fx = (torch.fft.fftfreq(w, device=device, dtype=torch.float64) * w).round()
    return fy[:, None] ** 2 + fx[None, :] ** 2 <= float(r) ** 2


def lowpass_filter(x: Tensor, r: float) -> Tensor:
    """``E_lp`` of a real ``[..., H, W]`` float tensor: keep the frequencies of ``disc_mask``."""
    mask = disc_mask((x.shape[-2], x.shape[-1]), r, device=x.device)
    spectrum = torch.fft.fft2(x, dim=(-2, -1))
    return torch.fft.ifft2(spectrum * mask, dim=(-2, -1)).real
