"""Pictures for the page, as PNG bytes: the image, the label overlay, score and attention maps.

Every picture is at most :data:`DISPLAY_SIDE` pixels on its longest side (the page maps
pointer positions back to working-image pixels itself). Colour scales are fixed so maps
can be compared: scores run 0..1 (``viridis``); attention runs from the map's minimum to
its maximum (``inferno``, opacity growing with the weight, as ``ovearth attention`` draws it).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..constants import NODATA_LABEL, UNCLASSIFIED_LABEL

#: Longest side of the pictures sent to the page.
DISPLAY_SIDE = 1024


def png(picture: Image.Image | np.ndarray) -> bytes:
    """``picture`` (an image, or an ``[H, W]`` / ``[H, W, 3|4]`` uint8 array) as PNG bytes."""
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def shown(picture: np.ndarray, nearest: bool = False) -> Image.Image:
    """An ``[H, W, C]`` uint8 array as an image at most :data:`DISPLAY_SIDE` on a side."""
    image = Image.fromarray(picture)
    scale = DISPLAY_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.NEAREST if nearest else Image.BILINEAR)
    return image


def blend(rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Class colours over the image, by ``segment``'s overlay rules.

    Args:
        rgb: ``[H, W, 3]`` uint8.
        labels: ``[H, W]`` class indices into ``colors``; 254 (unclassified) keeps the
            image as it is, 255 (nodata) darkens it.
        colors: ``[K, 3]`` uint8.
        alpha: colour opacity.

    Returns:
        ``[H, W, 3]`` uint8.

    """
    nodata = labels == NODATA_LABEL
    keep = nodata | (labels == UNCLASSIFIED_LABEL)
    color_img = colors[np.where(keep, 0, labels).clip(0, len(colors) - 1)]
    out = (rgb * (1 - alpha) + color_img * alpha).astype(np.uint8)
    out[keep] = rgb[keep]
    out[nodata] = (rgb[nodata] * 0.35).astype(np.uint8)
    return out


def _lut(name: str) -> np.ndarray:
    """``[256, 3]`` uint8 colours of a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def score_map(scores: Tensor, valid: np.ndarray) -> np.ndarray:
    """One class's scores ``[H, W]`` in 0..1 as ``[H, W, 3]`` uint8 (viridis; nodata black)."""
    values = scores.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    out = _lut("viridis")[values]
    out[~valid] = 0
    return out


def attention_map(rgb: np.ndarray, weights: Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Patch weights ``[N]`` on a ``grid`` (``N = h * w``) upsampled over ``rgb`` ``[H, W, 3]``.

    The heat runs from the map's minimum to its maximum (inferno); its opacity grows from
    0.15 to 0.75 with the weight, so the image stays visible where attention is low.
    """
    picture = np.asarray(shown(rgb))
    size = picture.shape[:2]
    heat = F.interpolate(weights.float().view(1, 1, *grid), size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]
    low, high = float(heat.min()), float(heat.max())
    unit = ((heat - low) / max(high - low, 1e-12)).numpy()
    color = _lut("inferno")[np.clip(np.round(unit * 255), 0, 255).astype(np.uint8)]
    alpha = (0.15 + 0.6 * unit)[..., None]
    return (picture * (1 - alpha) + color * alpha).astype(np.uint8)
