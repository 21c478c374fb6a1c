"""What the tests share: the dtypes, layouts and names they sweep, the device
parametrisation (a case that holds on both back ends is written once and runs on
each), and the one-thread fixture for small inputs. Tolerances are helpers.TOL."""
import pytest
import torch

from se_fused import _names

from .helpers import num_threads

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
ACTIVATIONS = list(_names.ACTIVATIONS)
GATES = list(_names.GATES)
# residual, out_activation
EPILOGUES = {"plain": (False, None), "residual": (True, None), "residual_relu": (True, "relu")}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
# The "cuda" variants exist (and skip) without a GPU, so that the same test ids run on
# one: scripts/gpu_check.sh selects them with -k cuda.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def per_device(cases):
    """(device, case) parameters from {device: [case, ...]}: for inputs chosen to reach
    each back end's own tiles and tails."""
    return [pytest.param(device, case, marks=[requires_cuda] if device == "cuda" else [])
            for device, device_cases in cases.items() for case in device_cases]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Small inputs: one intra-op thread is faster, and much faster on a busy machine
    (OpenMP threads spinning against other processes made small tests 50x slower)."""
    with num_threads(1):
        yield
