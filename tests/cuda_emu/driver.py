"""Builds and calls the CPU emulation of the CUDA kernels (emu.cpp, emu_shim.h).

The library is compiled once per content of its sources (csrc/cuda headers,
se_common.h, this directory) into build/cuda_emu/ with the host C++ compiler and
torch's headers only; no CUDA toolkit is involved. `load()` returns None when
there is no C++ compiler, so the tests can skip.

The calls mirror what csrc/cuda/se_cuda_ops.cpp does around the kernels (layout
of the outputs, parameters in the accumulation dtype, alignment -> vector mode,
the L2 size -> policy and tile order, pre recomputed when the backward gets none),
with every output poisoned with NaN first so that an element nobody writes shows.

The library is compiled with FMA contraction on (-mfma -ffp-contract=fast): a
product and sum the kernels leave to the compiler may then be fused in one path
of a tile and not in another, and the bit-equality tests show it (nvcc contracts
too unless told not to; the CUDA build uses --fmad=false and explicit se_fma).
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from typing import Optional

import torch

from se_fused._names import ACTIVATIONS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
ACTS = {"relu": 0, "silu": 1, "hardswish": 2, "gelu": 3}
IDENTITY = 4  # the one-layer form's activation (se_common.h Act::Identity)
GATES = {"sigmoid": 0, "hardsigmoid": 1}
N_SLOTS = 16


class EmuArgs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("N", "C", "H", "W", "R")] + [
        (n, ctypes.c_int32) for n in ("dtype", "channels_last", "act", "gate", "relu", "from_y",
                                      "backward", "one_layer", "concurrency", "samples2")] + [
        ("l2_bytes", ctypes.c_int64), ("slots", ctypes.c_int64), ("seed", ctypes.c_uint64),
        ("t", ctypes.c_void_p * N_SLOTS), ("bytes", ctypes.c_int64 * N_SLOTS)]


class EmuPlan(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("grid1", "grid2", "ws_size", "n_counters", "CTw",
                                              "CTn", "Tp", "CG", "CGn", "NT", "M2", "CTw2",
                                              "CTn2", "Tp2", "grid0", "wg_split", "wg_n")] + [
        (n, ctypes.c_int32) for n in ("vec", "keep", "reverse", "long_rows", "stack2")]


def _sources():
    files = [os.path.join(CSRC, f) for f in ("se_common.h", "se_dispatch.h")]
    for d in (os.path.join(CSRC, "cuda"), HERE):
        files += [os.path.join(d, f) for f in sorted(os.listdir(d))
                  if f.endswith((".h", ".cuh", ".cpp"))]
    return files


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def build() -> Optional[str]:
    cxx = _compiler()
    if cxx is None:
        return None
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    flags = ["-std=c++17", "-O2", "-mfma", "-ffp-contract=fast", "-shared", "-fPIC", "-Wall",
             "-Wno-unknown-pragmas", f"-I{CSRC}", f"-I{HERE}", f"-I{inc}"]
    h = hashlib.sha256(" ".join([cxx] + flags).encode())
    for f in _sources():
        with open(f, "rb") as fh:
            h.update(fh.read())
    out_dir = os.path.join(ROOT, "build", "cuda_emu")
    out = os.path.join(out_dir, f"se_emu-{h.hexdigest()[:16]}.so")
    if not os.path.exists(out):
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{out}.{os.getpid()}.tmp"
        r = subprocess.run([cxx] + flags + [os.path.join(HERE, "emu.cpp"), "-o", tmp],
                           capture_output=True, text=True)
        if r.returncode != 0:  # a failure to compile the kernels is a test failure, not a skip
            raise RuntimeError(f"building the CUDA emulation failed:\n{r.stderr[-4000:]}")
        os.replace(tmp, out)
    return out


class Emulator:
    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        lib.se_emu_run.argtypes = [ctypes.POINTER(EmuArgs), ctypes.c_char_p, ctypes.c_int]
        lib.se_emu_plan.argtypes = [ctypes.POINTER(EmuArgs), ctypes.POINTER(EmuPlan)]
        lib.se_emu_fastdiv.argtypes = [ctypes.c_uint64, ctypes.c_uint64]
        lib.se_emu_fastdiv.restype = ctypes.c_uint64
        self.lib = lib

    # --- argument blocks

    @staticmethod
    def _args(shape, R, dtype, channels_last, backward, *, act="relu", gate="sigmoid",
              relu=False, from_y=False, one_layer=False, concurrency=3, samples2=0,
              l2_bytes=1 << 40, slots=0, seed=0):
        """concurrency: emulated blocks resident at once; samples2: launch 2's samples per
        block (0: the plan's); l2_bytes: the L2 size the plan assumes; slots: launch 2
        blocks the device would hold (0: unknown, the most samples a block)."""
        a = EmuArgs()
        a.N, a.C, a.H, a.W = shape
        a.R = R
        a.dtype = DTYPES[dtype]
        a.channels_last = int(channels_last)
        a.act = IDENTITY if one_layer else ACTS[act]
        a.gate = GATES[gate]
        a.relu, a.from_y, a.backward = int(relu), int(from_y), int(backward)
        a.one_layer, a.concurrency, a.samples2 = int(one_layer), concurrency, samples2
        a.l2_bytes, a.slots, a.seed = l2_bytes, slots, seed
        return a

    @staticmethod
    def _put(a, slot, t):
        if t is None:
            return
        a.t[slot] = t.data_ptr()
        a.bytes[slot] = t.numel() * t.element_size()

    def plan(self, shape, R, dtype, channels_last=False, backward=False, **kw):
        p = EmuPlan()
        self.lib.se_emu_plan(ctypes.byref(self._args(shape, R, dtype, channels_last, backward,
                                                     **kw)), ctypes.byref(p))
        return p

    def fastdiv(self, a: int, d: int) -> int:
        return self.lib.se_emu_fastdiv(a, d)

    def _run(self, a):
        err = ctypes.create_string_buffer(512)
        if self.lib.se_emu_run(ctypes.byref(a), err, len(err)) != 0:
            raise RuntimeError("emulated kernel failed: " + err.value.decode())

    # --- the two passes, as the CUDA host code calls them

    @staticmethod
    def _layout(x):
        """(channels_last, x in the layout the kernels read) as se_buffers.cpp decides."""
        if x.is_contiguous():
            return False, x
        if x.is_contiguous(memory_format=torch.channels_last):
            return True, x
        return False, x.contiguous()

    @staticmethod
    def _params(acc, *ts):
        return [None if t is None else t.detach().to(acc).contiguous() for t in ts]

    def forward(self, x, w1, b1, w2, b2, residual=None, activation="relu", gate="sigmoid",
                out_activation=None, inplace=False, **kw):
        """(y, z, pre); with inplace, y is x itself, overwritten."""
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        cl, xk = self._layout(x)
        fmt = torch.channels_last if cl else torch.contiguous_format
        if inplace:
            y = xk
        else:
            y = torch.full(x.shape, float("nan"), dtype=x.dtype).contiguous(memory_format=fmt)
        z = torch.full((x.shape[0], x.shape[1]), float("nan"), dtype=acc)
        pre = torch.full((x.shape[0], w1.shape[0] + x.shape[1]), float("nan"), dtype=acc)
        res = None if residual is None else residual.contiguous(memory_format=fmt)
        w1, b1, w2, b2 = self._params(acc, w1, b1, w2, b2)
        a = self._args(tuple(x.shape), w1.shape[0], x.dtype, cl, False, act=activation,
                       gate=gate, relu=out_activation == "relu", one_layer=w2 is None, **kw)
        for slot, t in enumerate((xk, res, y, z, pre)):
            self._put(a, slot, t)
        for slot, t in zip(range(10, 14), (w1, b1, w2, b2)):
            self._put(a, slot, t)
        self._run(a)
        return y, z, pre

    def backward(self, grad_y, x, z, y, w1, b1, w2, b2, activation="relu", gate="sigmoid",
                 want_grad_residual=False, x_is_output=False, pre=None, **kw):
        """(grad_x, grad_residual or None, grad_w1, grad_b1, grad_w2, grad_b2); grad_w2 and
        grad_b2 are None in the one-layer form (w2 None)."""
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        cl, xk = self._layout(x)
        fmt = torch.channels_last if cl else torch.contiguous_format
        nan = float("nan")
        gy = grad_y.contiguous(memory_format=fmt)
        mask = None if y is None else y.contiguous(memory_format=fmt)
        gx = torch.full(x.shape, nan, dtype=x.dtype).contiguous(memory_format=fmt)
        gres = (torch.full(x.shape, nan, dtype=x.dtype).contiguous(memory_format=fmt)
                if (y is not None and want_grad_residual) else None)
        R, C = w1.shape
        one_layer = w2 is None
        gw1 = torch.full((R, C), nan, dtype=acc)
        gb1 = torch.full((R,), nan, dtype=acc)
        gw2 = None if one_layer else torch.full((C, R), nan, dtype=acc)
        gb2 = None if one_layer else torch.full((C,), nan, dtype=acc)
        w1, b1, w2, b2 = self._params(acc, w1, b1, w2, b2)
        zc = z.to(acc).contiguous()
        if pre is None:  # as se_cuda_ops.cpp's pre_from_z
            pre = pre_from_z(zc, w1, b1, w2, b2, activation)
        pre = pre.to(acc).contiguous()
        a = self._args(tuple(x.shape), R, x.dtype, cl, True, act=activation, gate=gate,
                       from_y=x_is_output, one_layer=one_layer, **kw)
        for slot, t in enumerate((gy, xk, mask, gx, gres, zc, gw1, gb1, gw2, gb2)):
            self._put(a, slot, t)
        for slot, t in zip(range(10, 15), (w1, b1, w2, b2, pre)):
            self._put(a, slot, t)
        self._run(a)
        return gx, gres, gw1, gb1, gw2, gb2


def pre_from_z(z, w1, b1, w2, b2, activation):
    """[a1 | a2] from z, as the CUDA host code computes it when the backward gets no pre."""
    a1 = z @ w1.t() + (0 if b1 is None else b1)
    if w2 is None:
        return torch.cat([a1, a1], dim=1)
    a2 = ACTIVATIONS[activation](a1) @ w2.t() + (0 if b2 is None else b2)
    return torch.cat([a1, a2], dim=1)


def load() -> Optional[Emulator]:
    path = build()
    return None if path is None else Emulator(path)
