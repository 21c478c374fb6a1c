#!/usr/bin/env python
"""The CPU kernels' small-layer products (csrc/cpu/se_cpu_gemm.h) against MKL's
sgemm through torch.addmm, one core, on the deep stages' shapes at the group
sizes the fused kernel uses (and at one sample, the N = 1 case).

    python benchmarks/gemm_vs_mkl.py

Compiles a small C++ timing loop around the header with g++ (-O3 -march=native,
as setup.py builds the kernels), prints microseconds per product for both.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parent.parent
# (name, C, R, samples per group in the fused forward at N = 32, 2 threads)
SHAPES = [("SE-ResNet-50 s3", 1024, 64, 1), ("SE-ResNet-50 s4", 2048, 128, 6),
          ("EfficientNet-B0 s6.1", 1152, 48, 2), ("MobileNetV3-L b14-15", 960, 240, 8),
          ("RegNetY-800MF s3.1", 320, 80, 1), ("RegNetY-800MF s4.1", 784, 196, 8)]

CPP = r"""
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "cpu/se_cpu_gemm.h"
using se_fused::cpu::gemm_nt;
int main(int argc, char** argv) {
  const long g = atol(argv[1]), C = atol(argv[2]), R = atol(argv[3]);
  std::vector<float> z(g * C, 0.5f), w1(R * C, 0.01f), b1(R, 0.1f), h(g * R), w2(C * R, 0.01f),
      b2(C, 0.1f), s(g * C);
  auto run = [&] {
    gemm_nt(z.data(), C, g, w1.data(), C, 0, R, C, b1.data(), h.data(), R);
    gemm_nt(h.data(), R, g, w2.data(), R, 0, C, R, b2.data(), s.data(), C);
  };
  double best = 1e30;
  for (int rep = 0; rep < 30; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) run();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 20);
  }
  printf("%.2f\n", best * 1e6);
}
"""


def own_us(exe: Path, g: int, C: int, R: int) -> float:
    return float(subprocess.run([str(exe), str(g), str(C), str(R)], check=True,
                                capture_output=True, text=True).stdout)


def mkl_us(g: int, C: int, R: int) -> float:
    z, w1, b1 = torch.full((g, C), 0.5), torch.full((R, C), 0.01), torch.full((R,), 0.1)
    w2, b2 = torch.full((C, R), 0.01), torch.full((C,), 0.1)
    h, s = torch.empty(g, R), torch.empty(g, C)

    def run():
        torch.addmm(b1, z, w1.t(), out=h)
        torch.addmm(b2, h, w2.t(), out=s)
    t = Timer("run()", globals={"run": run}, num_threads=1)
    return min(t.blocked_autorange(min_run_time=0.2).median for _ in range(3)) * 1e6


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "gemm.cpp", Path(tmp) / "gemm"
        src.write_text(CPP)
        subprocess.run(["g++", "-O3", "-march=native", "-ffp-contract=off", "-std=c++17",
                        f"-I{ROOT / 'csrc'}", str(src), "-o", str(exe)], check=True)
        print("| shape | samples | se_fused µs | MKL (torch.addmm) µs | MKL / se_fused |")
        print("|---|---|---|---|---|")
        for name, C, R, g in SHAPES:
            for n in sorted({1, g}):
                a, b = own_us(exe, n, C, R), mkl_us(n, C, R)
                print(f"| {name} C={C} R={R} | {n} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
