"""Sliding-window placement, exactly as mmsegmentation's ``slide_inference``.

``n = max(H - crop + stride - 1, 0) // stride + 1`` windows per axis; window ``i``
spans ``[y1, y2)`` with ``y1 = i * stride``, ``y2 = min(y1 + crop, H)``,
``y1 = max(y2 - crop, 0)`` (same for x). Windows are used only when ``crop > 0`` and
the image exceeds the crop in some side; otherwise the whole image is one view.
"""

from __future__ import annotations

from typing import NamedTuple

from ..errors import InputError


class Window(NamedTuple):
    """A view ``image[y1:y2, x1:x2]``."""

    y1: int
    y2: int
    x1: int
    x2: int

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the window."""
        return self.y2 - self.y1, self.x2 - self.x1


def check_slide(crop: int, stride: int) -> None:
    """Validate slide settings.

    Raises:
        InputError: negative values, a crop without a stride, or a stride larger than
            the crop (which would leave pixels uncovered).

    """
    if crop < 0 or stride < 0:
        raise InputError(f"slide crop and stride must be >= 0, got crop={crop}, stride={stride}.")
    if crop > 0 and stride == 0:
        raise InputError(f"slide crop {crop} needs a stride > 0 (the reference uses stride = crop).")
    if crop > 0 and stride > crop:
        raise InputError(
            f"slide stride {stride} is larger than the crop {crop}; some pixels would get no view."
        )


def views_for(height: int, width: int, crop: int, stride: int) -> list[Window]:
    """Views of an image: sliding windows, or the whole image.

    Args:
        height: image height.
        width: image width.
        crop: window side (0 disables sliding).
        stride: window step.

    Returns:
        The windows in row-major order (one covering the image when not sliding).

    """
    check_slide(crop, stride)
    if crop == 0 or (height <= crop and width <= crop):
        return [Window(0, height, 0, width)]
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2 = min(r * stride + crop, height)
            x2 = min(c * stride + crop, width)
            windows.append(Window(max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


def tiles_without_overlap(windows: list[Window], height: int, width: int) -> bool:
    """True when ``windows`` cover the ``height x width`` image with no pixel in two of them.

    Windows placed by :func:`views_for` cover every pixel, so their areas summing to
    the image's area means no overlap.
    """
    return sum((w.y2 - w.y1) * (w.x2 - w.x1) for w in windows) == height * width
