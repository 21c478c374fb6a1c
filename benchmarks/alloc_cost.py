#!/usr/bin/env python
"""What a fresh output costs on this CPU: x.clone() against a copy into an existing
buffer, a read-only pass (mean), the fused forward and the eager reference, several
times each, in the layout given (nchw or channels_last). The README's explanation
of the CPU numbers quotes this script's output.

    python benchmarks/alloc_cost.py nchw
    THP_MEM_ALLOC_ENABLE=1 python benchmarks/alloc_cost.py nchw   # huge-page allocator
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's se_fused
import se_fused  # noqa: E402
from se_fused import reference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("layout", choices=["nchw", "channels_last"], nargs="?", default="nchw")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    N, C, H, W, R = 32, 256, 56, 56, 16
    x = torch.randn(N, C, H, W).contiguous(memory_format=fmt)
    params = (torch.randn(R, C) / C**0.5, torch.randn(R), torch.randn(C, R) / R**0.5, torch.randn(C))
    env = dict(x=x, y=torch.empty_like(x), p=params, fused=se_fused.squeeze_excite,
               eager=reference.squeeze_excite)
    stmts = {"x.clone()": "x.clone()", "y.copy_(x)": "y.copy_(x)", "x.mean((2,3))": "x.mean((2, 3))",
             "fused forward": "fused(x, *p)", "eager forward": "eager(x, *p)"}
    print(f"x = {tuple(x.shape)} float32 {args.layout}, {args.threads} threads, "
          f"{x.numel() * 4 / 2**20:.0f} MiB; median ms of each repeat")
    with torch.no_grad():
        for label, stmt in stmts.items():
            ms = [Timer(stmt, globals=env).blocked_autorange(min_run_time=0.5).median * 1e3
                  for _ in range(args.repeats)]
            print(f"  {label:15s} " + "  ".join(f"{m:7.1f}" for m in ms))


if __name__ == "__main__":
    main()
