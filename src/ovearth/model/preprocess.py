"""Image preprocessing for SAM 3, as Meta's ``Sam3Processor`` does it.

Meta's processor (and so SegEarth-OV3) runs torchvision's v2 transforms on the image
tensor on the model's device: ``ToDtype(uint8)`` -> ``Resize(S x S)`` (bilinear,
antialiased) **on the uint8 image** -> ``* (1 / 255)`` -> ``(x - 0.5) / 0.5``.
torchvision's ``resize_image`` resizes a uint8 tensor

* on CPU, when ``torch.backends.cpu.get_cpu_capability()`` contains ``"AVX2"``: with
  torch's native uint8 bilinear-antialias kernel, on the uint8 tensor itself;
* on CUDA (and on CPUs whose capability string lacks ``"AVX2"``, which includes
  ``"AVX512"``): in float32, then ``round`` and cast back to uint8.

The two differ by one 8-bit step in about a fifth of the values. :func:`resize_uint8`
uses the uint8 kernel on every CPU (the same result on every CPU, and Meta's on the
AVX2 CPU where the goldens in ``shared/peer`` were made) and the float path elsewhere,
as torchvision does on CUDA, where SegEarth-OV3's published numbers were computed.
Verified on CPU (torch 2.13): equal bit for bit to the ``pixel_values`` of Meta's
``sam3`` 0.1.4 (``tests/test_peer.py``); both branches are checked against their
definitions in ``tests/test_preprocess.py``; ``benchmarks/device_check.py`` compares the
CUDA branch with torchvision's formula on the GPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..constants import IMAGE_MEAN, IMAGE_STD
from ..errors import InputError


def native_uint8_resize(device: torch.device) -> bool:
    """Whether ``device`` resizes the uint8 tensor itself (CPU) or in float32 (others)."""
    return device.type == "cpu"


def resize_uint8(view: Tensor, size: int, native: bool | None = None) -> Tensor:
    """Bilinear antialiased resize of a uint8 image, as torchvision's v2 ``Resize``.

    Args:
        view: ``[3, h, w]`` uint8.
        size: square output side ``S``.
        native: resize the uint8 tensor itself (True) or in float32 and round (False);
            None: :func:`native_uint8_resize` of ``view``'s device.

    Returns:
        ``[3, S, S]`` uint8 (``view`` itself when it has that size already).

    """
    if tuple(view.shape[-2:]) == (size, size):
        return view
    native = native_uint8_resize(view.device) if native is None else native
    x = view[None] if native else view[None].to(torch.float32)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if not native:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[0]


def preprocess(view: Tensor, size: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Resize and normalise one view: ``(resize_uint8(view) * (1 / 255) - 0.5) / 0.5``.

    Args:
        view: ``[3, h, w]`` uint8 RGB.
        size: square model input size ``S``.
        dtype: output dtype.

    Returns:
        ``[3, S, S]`` normalised pixels on the view's device.

    """
    x = resize_uint8(view, size).to(torch.float32).mul_(1.0 / 255)  # torchvision's ToDtype(scale=True)
    mean = torch.tensor(IMAGE_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(IMAGE_STD, device=x.device)[:, None, None]
    return ((x - mean) / std).to(dtype)


def to_chw_uint8(image: np.ndarray | Tensor) -> Tensor:
    """``[H, W, 3]`` numpy or ``[3, H, W]`` tensor, uint8 -> ``[3, H, W]`` uint8 tensor (a view, no copy).

    Raises:
        InputError: another shape or dtype (with a hint for non-uint8 rasters).

    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"Expected an [H, W, 3] RGB array, got shape {image.shape}.")
        if image.dtype != np.uint8:
            raise InputError(
                f"Expected a uint8 RGB array, got {image.dtype}; see ovearth.data.raster for scaling."
            )
        return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise InputError(f"Expected a [3, H, W] uint8 tensor, got {tuple(image.shape)} {image.dtype}.")
    return image
