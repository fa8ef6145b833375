"""Two-pass zoom: re-run the least certain regions at a higher resolution (MISSION.md route 5).

``zoom="k=4,scale=2"``. After the first pass over the image:

* candidate regions are ``ceil(H / scale) x ceil(W / scale)`` windows, placed like the
  sliding windows (mmseg's rule) with a stride of half a region;
* each is scored by **uncertainty**: the mean over its pixels of ``1 - (l1 - l2)``, where
  ``l1 >= l2`` are the two largest class logits of the first pass (logits lie in
  [0, 1]; a score near 1 means the two leading classes are tied);
* the ``k`` highest-scoring regions are cropped and re-run as views (resized to the
  model's input, so each is seen ``scale`` times larger than in the first pass);
* merge: every zoomed region counts as one more view of its pixels, the reference's own
  averaging rule: ``L = (L_first + sum_r L_r) / (1 + number of regions covering)``;
  presence is the max over all views.

At ``scale=1`` the only region is the whole image, whose re-run equals the first pass,
so the output is bit-identical to one pass (tested). Cost: ``k`` more views per image
(backbone and heads each), i.e. about ``1 + k / views`` times one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from .windows import Window

#: the documented ranges of the zoom parameters (closed)
LIMITS = {"k": (1, 64), "scale": (1.0, 16.0)}


@dataclass(frozen=True)
class Zoom:
    """Zoom parameters: ``k`` regions, each ``1 / scale`` of the image per side."""

    k: int = 4
    scale: float = 2.0

    @classmethod
    def parse(cls, spec: str) -> Zoom | None:
        """``"k=4,scale=2"`` -> Zoom; ``""`` or ``"none"`` -> None.

        Raises:
            InputError: unknown key, non-numeric value, or a value outside :data:`LIMITS`
                (``k`` a whole number in 1..64, ``scale`` in 1..16).

        """
        text = spec.strip()
        if text.lower() in {"", "none"}:
            return None
        values: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = item.partition("=")
            if not eq or key.strip() not in {"k", "scale"}:
                raise InputError(f"--zoom '{spec}': use k=N,scale=S (e.g. k=4,scale=2), not '{item}'.")
            try:
                values[key.strip()] = float(value)
            except ValueError:
                raise InputError(f"--zoom '{spec}': '{value}' is not a number.") from None
        k, scale = values.get("k", cls.k), values.get("scale", cls.scale)
        if not (float(k).is_integer() and LIMITS["k"][0] <= k <= LIMITS["k"][1]):
            raise InputError(f"--zoom '{spec}': k must be a whole number of regions in 1..{LIMITS['k'][1]}.")
        if not LIMITS["scale"][0] <= scale <= LIMITS["scale"][1]:  # also refuses nan and inf
            raise InputError(f"--zoom '{spec}': scale must be a finite number in 1..{LIMITS['scale'][1]:g}.")
        return cls(k=int(k), scale=float(scale))


def _starts(length: int, size: int) -> list[int]:
    stride = max(size // 2, 1)
    count = max(length - size + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride + size, length) - size, 0) for i in range(count)})


def candidate_regions(height: int, width: int, scale: float) -> list[Window]:
    """Regions of ``ceil(H / scale) x ceil(W / scale)`` at half-region stride."""
    rh, rw = math.ceil(height / scale), math.ceil(width / scale)
    return [Window(y, y + rh, x, x + rw) for y in _starts(height, rh) for x in _starts(width, rw)]


def uncertainty(class_logits: Tensor) -> Tensor:
    """``1 - (l1 - l2)`` per pixel from ``[K, H, W]`` class logits (1 where a single class)."""
    if class_logits.shape[0] < 2:
        return torch.ones(class_logits.shape[1:], device=class_logits.device)
    top = class_logits.topk(2, dim=0).values
    return 1 - (top[0] - top[1])


def choose_regions(class_logits: Tensor, zoom: Zoom) -> list[Window]:
    """The ``k`` most uncertain candidate regions, most uncertain first."""
    height, width = class_logits.shape[-2:]
    score = uncertainty(class_logits)
    regions = candidate_regions(height, width, zoom.scale)
    means = torch.stack([score[r.y1 : r.y2, r.x1 : r.x2].mean() for r in regions])
    order = torch.argsort(means, descending=True, stable=True)[: zoom.k]
    return [regions[i] for i in order.tolist()]
