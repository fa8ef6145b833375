"""Preprocessing as Meta's processor does it: uint8 resize (torchvision's rule), then scale and normalise."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovearth.model.preprocess import native_uint8_resize, preprocess, resize_uint8

from .conftest import make_image

AA = dict(mode="bilinear", align_corners=False, antialias=True)


def _image(seed=0, size=(200, 260)):
    return torch.from_numpy(make_image(seed, *size)).permute(2, 0, 1)


def test_cpu_resizes_the_uint8_tensor_itself():
    view = _image()
    assert native_uint8_resize(torch.device("cpu")) and not native_uint8_resize(torch.device("meta"))
    out = resize_uint8(view, 336)
    expected = F.interpolate(
        view[None], size=(336, 336), mode="bilinear", align_corners=False, antialias=True
    )
    assert out.dtype == torch.uint8 and torch.equal(out, expected[0])


def test_float_branch_rounds_a_float_resize():
    view = _image(1)
    out = resize_uint8(view, 336, native=False)
    x = F.interpolate(
        view[None].float(), size=(336, 336), mode="bilinear", align_corners=False, antialias=True
    )
    assert out.dtype == torch.uint8 and torch.equal(out, x[0].round().to(torch.uint8))
    # the two branches differ by one 8-bit step in a sizeable share of values: the choice matters
    diff = (out.int() - resize_uint8(view, 336).int()).abs()
    assert diff.max() == 1 and diff.float().mean() > 0.05


def test_normalisation_and_no_resize_at_the_model_size():
    view = torch.zeros(3, 336, 336, dtype=torch.uint8)
    view[0], view[1] = 255, 51
    assert resize_uint8(view, 336) is view
    out = preprocess(view, 336)
    torch.testing.assert_close(
        out[:, 0, 0], torch.tensor([1.0, 51 * (1 / 255) * 2 - 1, -1.0]), rtol=0, atol=1e-7
    )
    assert out.dtype == torch.float32 and preprocess(view, 336, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("size", [(504, 504), (100, 700), (1024, 1024)])
def test_preprocess_is_the_scaled_uint8_resize(size):
    view = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (*size, 3), dtype=np.uint8)).permute(
        2, 0, 1
    )
    u = resize_uint8(view, 1008)
    expected = (u.to(torch.float32).mul_(1.0 / 255) - 0.5) / 0.5
    assert torch.equal(preprocess(view, 1008), expected)
