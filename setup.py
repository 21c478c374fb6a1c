"""Builds se_fused._C: the C++ kernels always, the CUDA kernels when torch is a
CUDA build and nvcc is found (whether a GPU is visible does not matter, so CI
without a GPU still compiles the CUDA code)."""
import glob
import os
import platform
import shutil

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """CUDA_HOME if set; else torch's guess when it has headers; else /usr/local/cuda."""
    for cand in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "include", "cuda_runtime.h")):
            return cand
    return None


def want_cuda():
    if os.environ.get("SE_FUSED_NO_CUDA", "0") == "1":
        return False, None
    if torch.version.cuda is None:
        return False, None
    home = find_cuda_home()
    if home is None:
        return False, None
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.path.exists(nvcc) and shutil.which("nvcc") is None:
        return False, None
    return True, home


def cpu_flags():
    # Python's CFLAGS bring -fwrapv (3.12: -fno-strict-overflow, which wraps pointers
    # too), which stops gcc from seeing unit-stride accesses in the kernels (it emits
    # gathers); the C++ standard is torch's.
    # -ffp-contract=off: whether gcc fuses a multiply and an add into one FMA
    # depends on the inlining context, so the same expression could round
    # differently in two schedules of one kernel; the kernels write their FMAs out.
    flags = ["-O3", "-fno-wrapv", "-fstrict-overflow", "-fopenmp", "-ffp-contract=off"]
    # The kernels are memory-bound loops the compiler vectorises; let it use the
    # host's vector width. SE_FUSED_MARCH="" turns this off (e.g. for a portable build).
    march = os.environ.get("SE_FUSED_MARCH", "native")
    if march and platform.machine() in ("x86_64", "AMD64"):
        flags.append(f"-march={march}")
    return flags


def extensions():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    use_cuda, cuda_home = want_cuda()
    extra = {"cxx": cpu_flags()}
    macros = []
    if use_cuda:
        # torch reads CUDA_HOME when it imports cpp_extension; make the choice stick.
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to build for and no list given: machine code for Ampere/Ada
            # (sm_80 runs on 8.x) and Hopper, plus Hopper PTX that newer GPUs compile
            # at load time. CI's Makefile sets 9.0 alone, which halves nvcc time.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        sources += sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
        # No --use_fast_math: it flushes denormals and approximates exp, which the
        # sigmoid gate and its float64 gradcheck should not see. --prec-div=false
        # (float division only, <= 2 ulp) keeps the IEEE-division slow path, a
        # subroutine call, out of the kernels. --fmad=false: a * b + c is never
        # contracted, so the vector and scalar paths of a tile round alike; the
        # kernels write every wanted FMA out (se_fma).
        extra["nvcc"] = ["-O3", "-lineinfo", "--prec-div=false", "--fmad=false"]
        for knob in ("SE_FUSED_MIN_BLOCKS", "SE_FUSED_MIN_BLOCKS_2"):  # register budgets
            if os.environ.get(knob):  # (se_cuda_common.cuh), for experiments on a GPU
                extra["nvcc"].append(f"-D{knob}={int(os.environ[knob])}")
        if os.environ.get("SE_FUSED_PTXAS_VERBOSE", "0") == "1":
            extra["nvcc"].append("-Xptxas=-v")  # registers and spills per kernel
        macros.append(("SE_FUSED_WITH_CUDA", "1"))
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    print(f"se_fused: building {'C++ and CUDA' if use_cuda else 'C++ only'} "
          f"({len(sources)} sources)", flush=True)
    return [
        ext_cls(
            "se_fused._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
            define_macros=macros,
            py_limited_api=True,
        )
    ]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
