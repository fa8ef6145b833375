"""The numeric region of a forward pass: strict float32, or bfloat16 autocast.

PyTorch lets cuDNN convolutions use TF32 by default on Ampere and later GPUs
(``torch.backends.cudnn.allow_tf32 = True``). TF32 keeps 10 mantissa bits, so SAM 3's FPN
neck and pixel decoder then differ from float32 by about 1e-3 in the semantic logits
(measured on an H200 against Meta's goldens: 2.6e-3 with TF32, 7.9e-5 without;
``benchmarks/results/nvidia-h200*_device_check.json``). ``"float32"`` is the exact path,
so its region turns TF32 off for convolutions and matrix products and restores the
caller's flags on exit; ``"bfloat16"`` is autocast, as SegEarth-OV3 runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def precision_region(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed model calls in ``precision`` (``"float32"`` or ``"bfloat16"``) on ``device``.

    ``"float32"`` on CUDA: ``torch.backends.cudnn.allow_tf32`` and
    ``torch.backends.cuda.matmul.allow_tf32`` are False inside, restored after (even on error).
    ``"bfloat16"``: ``torch.autocast(device.type, torch.bfloat16)``. Elsewhere nothing changes.
    """
    bf16 = precision == "bfloat16"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if bf16 or device.type != "cuda":
            yield
            return
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = cudnn
            torch.backends.cuda.matmul.allow_tf32 = matmul
