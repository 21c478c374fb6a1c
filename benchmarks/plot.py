"""Plots of a benchmark result: speedups per case, and the fraction of the roofline.

    python benchmarks/plot.py benchmarks/results/<device-slug>.json

redraws the PNGs beside the JSON (bench_se.py draws them after each run).
"""
import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from _report import case_label, image_paths, write_atomic  # noqa: E402

PASSES = ("forward", "backward", "fwd+bwd")
BASELINES = {"eager": "vs eager", "compile": "vs torch.compile",
             "compile_autotune": "vs compile max-autotune"}


def _by_pass(cases: List[dict]) -> Dict[str, List[dict]]:
    return {p: [c for c in cases if c["pass"] == p] for p in PASSES
            if any(c["pass"] == p for c in cases)}


def _label(c: dict) -> str:
    return f"{case_label(c)} {c['N']}×{c['C']}×{c['H']}×{c['W']} {c['dtype']} {c['layout']}"


def _fmt(v: float, spec: str) -> str:
    return "" if math.isnan(v) else spec.format(v)


def _figure(groups: Dict[str, List[dict]], title: str):
    n = max(len(g) for g in groups.values())
    fig, axes = plt.subplots(1, len(groups), figsize=(6 + 4 * len(groups), 1.5 + 0.32 * n),
                             sharey=True, squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def plot_speedups(cases: List[dict], path: Path, title: str) -> None:
    """Fused speedup over each baseline that ran, per case, one panel per pass (log scale)."""
    groups = _by_pass(cases)
    fig, axes = _figure(groups, title + ": speedup of fused (>1 = fused faster)")
    baselines = [b for b in BASELINES if any(c.get(f"speedup_{b}") for c in cases)]
    height = 0.8 / max(1, len(baselines))
    for ax, (pass_, rows) in zip(axes, groups.items()):
        ys = range(len(rows))
        for i, b in enumerate(baselines):
            vals = [c.get(f"speedup_{b}") or math.nan for c in rows]
            bars = ax.barh([y + (i - (len(baselines) - 1) / 2) * height for y in ys], vals,
                           height=height, label=BASELINES[b])
            ax.bar_label(bars, labels=[_fmt(v, "{:.2f}×") for v in vals], fontsize=6, padding=2)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(pass_)
        ax.set_yticks(list(ys), [_label(c) for c in rows], fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_roofline(cases: List[dict], path: Path, title: str, copy_gbps: float) -> None:
    """Achieved floor bandwidth of the fused op as a fraction of the measured copy bandwidth."""
    groups = _by_pass(cases)
    fig, axes = _figure(groups, f"{title}: fused op, fraction of the copy roofline "
                                f"({copy_gbps:.0f} GB/s)")
    for ax, (pass_, rows) in zip(axes, groups.items()):
        vals = [c.get("roofline_fraction") or math.nan for c in rows]
        bars = ax.barh(range(len(rows)), vals, color="tab:green")
        ax.bar_label(bars, labels=[_fmt(v, "{:.0%}") for v in vals], fontsize=6, padding=2)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xlim(0, max([1.1] + [v * 1.15 for v in vals if v == v]))
        ax.set_title(pass_)
        ax.set_yticks(range(len(rows)), [_label(c) for c in rows], fontsize=8)
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def plot_result(result: dict, json_path: Path) -> List[Path]:
    """Both PNGs beside json_path; returns their paths."""
    title = f"{result['device']} ({result['commit'][:12]})"
    cases = result["cases"]
    if not cases:
        return []
    paths = image_paths(json_path)
    plot_speedups(cases, paths[0], title)
    plot_roofline(cases, paths[1], title, result["copy_GBps"])
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="a result written by bench_se.py")
    args = p.parse_args(argv)
    for path in plot_result(json.loads(args.json.read_text()), args.json):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
