"""Pictures people would rather look at than numbers: label overlays with a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .constants import NODATA_LABEL, UNCLASSIFIED_LABEL

#: Distinct colours (Tableau 20 order, strong colours first), repeated beyond 20 classes.
_BASE_COLORS = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (174, 199, 232),
        (255, 187, 120),
        (152, 223, 138),
        (255, 152, 150),
        (197, 176, 213),
        (196, 156, 148),
        (247, 182, 210),
        (199, 199, 199),
        (219, 219, 141),
        (158, 218, 229),
    ],
    dtype=np.uint8,
)

#: Colour of unclassified pixels in legends and colour tables (light grey).
UNCLASSIFIED_COLOR = (220, 220, 220)

#: Longest side of an overlay picture; larger scenes are shown downscaled.
MAX_OVERLAY_SIDE = 2048


def palette(num_classes: int) -> np.ndarray:
    """``[K, 3]`` uint8 colours, one per class."""
    reps = -(-num_classes // len(_BASE_COLORS))
    return np.tile(_BASE_COLORS, (reps, 1))[:num_classes]


def overlay(rgb: np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.5) -> Image.Image:
    """Blend class colours over the image and add a legend panel on the right.

    Args:
        rgb: ``[H, W, 3]`` uint8 image.
        labels: ``[H, W]`` class indices; 255 (nodata) keeps the image darkened, 254
            (unclassified) keeps it as it is (listed in the legend when present).
        names: class names for the legend.
        alpha: colour opacity.

    Returns:
        An RGB picture, downscaled so its longest image side is at most
        :data:`MAX_OVERLAY_SIDE`.

    """
    colors = palette(len(names))
    nodata = labels == NODATA_LABEL
    unclassified = labels == UNCLASSIFIED_LABEL
    color_img = colors[np.where(nodata | unclassified, 0, labels).clip(0, len(names) - 1)]
    blended = (rgb * (1 - alpha) + color_img * alpha).astype(np.uint8)
    blended[nodata] = (rgb[nodata] * 0.35).astype(np.uint8)
    blended[unclassified] = rgb[unclassified]
    picture = Image.fromarray(blended)
    scale = MAX_OVERLAY_SIDE / max(picture.size)
    if scale < 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    present = set(np.unique(labels[~nodata]).tolist())
    if UNCLASSIFIED_LABEL in present:  # a legend row of its own, in the raster's grey
        names, colors = [*names, "unclassified"], np.vstack([colors, UNCLASSIFIED_COLOR])
        present.add(len(names) - 1)
    return _with_legend(picture, names, colors, present)


#: longest class name shown in a legend (longer ones are cut with an ellipsis)
LEGEND_CHARS = 40


def shorten(name: str, limit: int = LEGEND_CHARS) -> str:
    """``name`` cut to ``limit`` characters with a trailing ellipsis when longer."""
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _with_legend(
    picture: Image.Image, names: list[str], colors: np.ndarray, present: set[int]
) -> Image.Image:
    font = ImageFont.load_default()
    row, pad, swatch = 18, 8, 12
    names = [shorten(n) for n in names]
    width = pad * 3 + swatch + max(int(font.getlength(f"{n} (absent)")) for n in names)
    height = max(picture.height, pad * 2 + row * len(names))
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(names):
        x, y = picture.width + pad, pad + k * row
        draw.rectangle(
            [x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in colors[k]), outline=(0, 0, 0)
        )
        label = name if k in present else f"{name} (absent)"
        draw.text(
            (x + swatch + pad, y), label, fill=(0, 0, 0) if k in present else (150, 150, 150), font=font
        )
    return canvas
