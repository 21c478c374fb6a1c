"""ONNX translations of the se_fused ops, for both of torch.onnx.export's exporters.

The fused op becomes the SE block written in standard ONNX operators:

    z = Flatten(GlobalAveragePool(x))                        (N, C), the op's 2nd output
    a1 = Gemm(z, w1, b1, transB=1);  a2 = Gemm(act(a1), w2, b2, transB=1)
    s = gate(a2);  pre = Concat(a1, a2, axis=1)              (N, R + C), the 3rd output
    y = out_act(x * Unsqueeze(s, [2, 3]) [+ residual])

with act Relu, x * Sigmoid(x) (silu), x * HardSigmoid(x) (hardswish, as PyTorch's
relu6(x + 3) / 6 and valid at every opset; ONNX's HardSwish needs opset 14) or
0.5 x (1 + Erf(x / sqrt 2)) (the exact gelu; ONNX's Gelu needs opset 20), gate Sigmoid
or HardSigmoid(alpha=1/6, beta=1/2) (PyTorch's hardsigmoid; ONNX's default alpha is
0.2). The one-layer form (w2 None) has no second Gemm and no activation: a2 = a1.
Like the op, z and the small layers are computed in float32 for float16/bfloat16 x
(float64 for float64 x), and y is rounded once to x's dtype.

- dynamo=False (TorchScript exporter): importing se_fused registers the symbolic
  (opset 13 and later) through torch.onnx.register_custom_op_symbolic; it serves the
  in-place se_forward_ too.
- dynamo=True: pass custom_translation_table=se_fused.onnx_translation_table().
  The dynamo exporter builds its registry afresh on every call, from torch's own
  table and that argument only, so there is nothing a library can register ahead.
  The table has no entry for the in-place se_forward_: torch.export turns its calls
  into auto_functionalized_v2 nodes, which torch's ONNX exporter cannot translate for
  any custom op, so the out-of-place op is what must reach this exporter.

One description of the graph (_emit_se) serves both exporters; each exporter only
supplies how a node is written (_TorchScriptBuilder, _OnnxScriptBuilder).
"""
import math

import torch

__all__ = ["onnx_translation_table"]

# ONNX TensorProto data types (the same numbers in onnx, onnx_ir and torch's exporter).
_FLOAT, _FLOAT16, _DOUBLE, _BFLOAT16 = 1, 10, 11, 16

# The TorchScript symbolics use Unsqueeze with axes as an input (opset 13).
_MIN_TORCHSCRIPT_OPSET = 13


def _acc_type(x_type: int) -> int:
    return _DOUBLE if x_type == _DOUBLE else _FLOAT


def _emit_se(b, x, w1, b1, w2, b2, residual, activation, gate, out_activation):
    """Adds the nodes of se_forward through builder b; returns (y, z, pre).

    b.op(name, *inputs, **attrs) adds a node, b.ints(values) an int64 constant,
    b.scalar(value, to) a scalar constant of ONNX data type `to`, b.dtype(v) gives a
    value's ONNX data type (TypeError if unknown), b.cast(v, to).
    """
    x_type = b.dtype(x)
    acc = _acc_type(x_type)

    def in_acc(v):
        return v if v is None or b.dtype(v) == acc else b.cast(v, acc)

    xa = in_acc(x)
    z = b.op("Flatten", b.op("GlobalAveragePool", xa), axis=1)
    a1 = b.op("Gemm", *_present(z, in_acc(w1), in_acc(b1)), transB=1)
    if w2 is None:  # the one-layer form
        a2 = a1
    else:
        h = _emit_activation(b, a1, activation, acc)
        a2 = b.op("Gemm", *_present(h, in_acc(w2), in_acc(b2)), transB=1)
    if gate == "sigmoid":
        s = b.op("Sigmoid", a2)
    elif gate == "hardsigmoid":
        s = b.op("HardSigmoid", a2, alpha=1.0 / 6.0, beta=0.5)
    else:
        raise ValueError(f"se_fused ONNX export: unknown gate {gate!r}")
    y = b.op("Mul", xa, b.op("Unsqueeze", s, b.ints([2, 3])))
    if residual is not None:
        y = b.op("Add", y, in_acc(residual))
    if out_activation == "relu":
        y = b.op("Relu", y)
    elif out_activation != "none":
        raise ValueError(f"se_fused ONNX export: unknown out_activation {out_activation!r}")
    if x_type != acc:
        y = b.cast(y, x_type)
    return y, z, b.op("Concat", a1, a2, axis=1)


def _emit_activation(b, a, activation, acc):
    if activation == "relu":
        return b.op("Relu", a)
    if activation == "silu":
        return b.op("Mul", a, b.op("Sigmoid", a))
    if activation == "hardswish":
        return b.op("Mul", a, b.op("HardSigmoid", a, alpha=1.0 / 6.0, beta=0.5))
    if activation == "gelu":
        cdf = b.op("Add", b.scalar(1.0, acc),
                   b.op("Erf", b.op("Mul", a, b.scalar(math.sqrt(0.5), acc))))
        return b.op("Mul", b.op("Mul", a, b.scalar(0.5, acc)), cdf)
    raise ValueError(f"se_fused ONNX export: unknown activation {activation!r}")


def _present(*inputs):
    # Gemm's bias is an optional trailing input: leave it out rather than pass a None.
    return inputs if inputs[-1] is not None else inputs[:-1]


# --- dynamo=False: TorchScript symbolics


class _TorchScriptBuilder:
    _SCALAR_TYPES = {"Float": _FLOAT, "Half": _FLOAT16, "Double": _DOUBLE,
                     "BFloat16": _BFLOAT16}
    _SUFFIX = {int: "_i", float: "_f", str: "_s"}

    def __init__(self, g):
        self.g = g

    def op(self, name, *inputs, **attrs):
        named = {}
        for key, value in attrs.items():
            suffix = "_is" if isinstance(value, (list, tuple)) else self._SUFFIX[type(value)]
            named[key + suffix] = value
        return self.g.op(name, *inputs, **named)

    def ints(self, values):
        return self.g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    def scalar(self, value, to):
        dtype = torch.float64 if to == _DOUBLE else torch.float32
        return self.g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

    def dtype(self, v):
        scalar = v.type().scalarType() if v.type().kind() == "TensorType" else None
        if scalar not in self._SCALAR_TYPES:
            raise TypeError(f"se_fused ONNX export: unsupported or unknown dtype {scalar} "
                            f"of {v.debugName()}")
        return self._SCALAR_TYPES[scalar]

    def cast(self, v, to):
        return self.g.op("Cast", v, to_i=to)


def _ts_args(g, args):
    from torch.onnx import symbolic_helper

    (x, w1, b1, w2, b2, residual, activation, gate, out_activation) = args
    tensors = [None if symbolic_helper._is_none(v) else v for v in (x, w1, b1, w2, b2, residual)]
    names = [symbolic_helper._parse_arg(v, "s") for v in (activation, gate, out_activation)]
    return _TorchScriptBuilder(g), tensors, names


def _ts_se_forward(g, *args):
    b, tensors, names = _ts_args(g, args)
    y, z, pre = _emit_se(b, *tensors, *names)
    if g.original_node.kind() == "se_fused::se_forward_":
        # The exporter sends the in-place op here too (it maps any "op_" to "op"), and
        # the node has two outputs, z and pre. Later readers of x must see y: rebind x
        # to y in the exporter's old-to-new value map, which the following nodes are
        # built from.
        # (A call whose z is never read is dropped by the exporter before any symbolic
        # runs, and y with it: code exported to ONNX must call the out-of-place op.)
        g.env[g.original_node.inputsAt(0)] = y
        return z, pre
    return y, z, pre


def _register_torchscript_symbolics():
    from torch.onnx import register_custom_op_symbolic

    # Registered once for both ops: the in-place one is looked up under this name too.
    register_custom_op_symbolic("se_fused::se_forward", _ts_se_forward, _MIN_TORCHSCRIPT_OPSET)


# --- dynamo=True: onnxscript translations


class _OnnxScriptBuilder:
    def __init__(self, op):
        self._op = op

    def op(self, name, *inputs, **attrs):
        return getattr(self._op, name)(*inputs, **attrs)

    def ints(self, values):
        return self._op.Constant(value_ints=list(values))

    def scalar(self, value, to):
        if to == _FLOAT:
            return self._op.Constant(value_float=value)
        import numpy as np
        import onnx_ir

        return self._op.Constant(value=onnx_ir.tensor(np.array(value, dtype=np.float64)))

    def dtype(self, v):
        dt = v.dtype
        if dt is None:
            raise TypeError(f"se_fused ONNX export: unknown dtype of {v.name}")
        return int(dt)

    def cast(self, v, to):
        return self._op.Cast(v, to=to)


def onnx_translation_table():
    """The translations torch.onnx.export(..., dynamo=True) needs for se_fused's ops.

    Pass it as custom_translation_table:

        torch.onnx.export(model, (x,), dynamo=True,
                          custom_translation_table=se_fused.onnx_translation_table())

    The exported graph holds only standard ONNX operators (default domain). Needs
    onnxscript, like the dynamo exporter itself.
    """
    from onnxscript import opset18

    builder = _OnnxScriptBuilder(opset18)

    # Named and annotated for the exporter: it reads the signature (str parameters
    # are attributes) and names the traced function after the Python one.
    def se_fused_se_forward(x, w1, b1=None, w2=None, b2=None, residual=None,
                            activation: str = "relu", gate: str = "sigmoid",
                            out_activation: str = "none"):
        return _emit_se(builder, x, w1, b1, w2, b2, residual, activation, gate, out_activation)

    return {torch.ops.se_fused.se_forward.default: se_fused_se_forward}


_register_torchscript_symbolics()
