"""The precision region: strict float32 turns TF32 off on CUDA and gives the caller's flags back."""

import pytest
import torch

from ovearth.model.precision import precision_region


@pytest.fixture
def tf32_on():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.filterwarnings("ignore:.*CUDA.*:UserWarning")  # a CPU-only build warns about cuda autocast
def test_float32_on_cuda_turns_tf32_off_and_restores(tf32_on):
    with precision_region(torch.device("cuda"), "float32"):
        assert flags() == (False, False)
    assert flags() == (True, True)
    with pytest.raises(RuntimeError), precision_region(torch.device("cuda"), "float32"):
        assert flags() == (False, False)
        raise RuntimeError("boom")
    assert flags() == (True, True)


@pytest.mark.filterwarnings("ignore:.*CUDA.*:UserWarning")
def test_bfloat16_and_cpu_leave_the_flags(tf32_on):
    with precision_region(torch.device("cuda"), "bfloat16"):
        assert flags() == (True, True)
    with precision_region(torch.device("cpu"), "float32"):
        assert flags() == (True, True)
        assert not torch.is_autocast_enabled("cpu")
    with precision_region(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
