"""The library handle: loads se_fused._C and registers the Python side of its ops.

se_fused._C defines the schemas (se_forward, se_forward_, se_backward), the CPU and
CUDA kernels and the argument checks. What torch.compile, torch.export, autograd and
opcheck need besides is registered here, through torch.library: the fake kernels
(_fake.py) and se_forward's autograd (_autograd.py; register_autograd refuses the
mutating se_forward_, which _autograd.ChosenSave covers).
"""
import torch

from . import _C  # noqa: F401  (loads the library: schemas and kernels)
from . import _autograd, _fake

ops = torch.ops.se_fused

for _name in ("se_forward", "se_forward_", "se_backward"):
    torch.library.register_fake(f"se_fused::{_name}", getattr(_fake, _name))
torch.library.register_autograd("se_fused::se_forward", _autograd.backward,
                                setup_context=_autograd.setup_context)
