"""se_fused: a fused Squeeze-and-Excitation block for PyTorch.

    y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2)   [+ residual] [then relu]

in one read and one write of x (C++ on the CPU, CUDA on the GPU).
"""
from . import reference
from .ops import squeeze_excite
from .modules import FusedSEBlock, SEBlock
from .swap import replace_se_blocks
from ._onnx import onnx_translation_table  # also registers the TorchScript ONNX symbolics

__all__ = ["squeeze_excite", "reference", "SEBlock", "FusedSEBlock", "replace_se_blocks",
           "onnx_translation_table"]
__version__ = "0.1.0"
