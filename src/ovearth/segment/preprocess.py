"""Image preprocessing for SAM 3, as Meta's ``Sam3Processor`` does it.

``uint8 view [3, h, w] -> bilinear antialiased resize to S x S (rounded to 8 bit, as a
uint8 resize rounds) -> x / 255 -> (x - 0.5) / 0.5``. Resizing in float and rounding
matches torchvision's uint8 ``Resize`` up to an occasional 1/255 step where the exact
value lies on .5; the same function serves both segmentation modes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import IMAGE_MEAN, IMAGE_STD


def preprocess(view: Tensor, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Resize and normalise one view.

    Args:
        view: ``[3, h, w]`` uint8 RGB.
        size: square model input size ``S``.
        dtype: output dtype.

    Returns:
        ``[3, S, S]`` normalised pixels on the view's device.

    """
    x = view.to(torch.float32)[None]
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.round_().clamp_(0, 255)
    x = x[0] / 255.0
    mean = torch.tensor(IMAGE_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, device=x.device)[:, None, None]
    return ((x - mean) / std).to(dtype)
