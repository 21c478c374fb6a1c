#!/usr/bin/env python
"""The project's performance targets, checked against a result of benchmarks/bench_se.py.

    python scripts/targets.py benchmarks/results/cpu-amd-epyc.json [more.json ...]
    python scripts/targets.py benchmarks/results     # a folder: its newest result

Prints, per result, the markdown "Targets" table and the cases that miss a target.
The measuring code knows nothing of the targets: this reads only the result's rows
("cases", "train_batch", "device_type"), so it applies to old and new results alike.
Files that are not bench_se.py results (the memory benchmark's, gpu_triage.json) are
skipped. Exit status 0 whatever is met: the table says so.

CPU (float32, the default 2 threads, issue 9): four targets on SE-ResNet-50 s1 and s4,
then the same over every case of the run. GPU (issue 16): roofline fractions at the
training batch, never slower than torch.compile, batch 1 forward against eager.
"""
import json
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import _report  # noqa: E402

# (case name, batch, pass, row key, op, goal, what it says), per layout, float32, no residual
CPU_CASE_TARGETS = (
    ("SE-ResNet-50 s1", 32, "forward", "fused_over_copy", "<=", 1.3, "fused forward / copy of x"),
    ("SE-ResNet-50 s1", 32, "forward", "speedup_eager", ">=", 4.0, "forward speedup vs eager"),
    ("SE-ResNet-50 s1", 32, "fwd+bwd", "speedup_eager", ">=", 3.0, "fwd+bwd speedup vs eager"),
    ("SE-ResNet-50 s4", 1, "forward", "speedup_eager", ">=", 2.0, "forward speedup vs eager"),
)

COLUMNS = [
    ("target", lambda t: t["what"]),
    ("layout", lambda t: t["layout"]),
    ("value", lambda t: _report.DASH if t["value"] is None
     else t.get("display") or f"{t['value']:.2f}"),
    ("goal", lambda t: f"{t['op']} {t['goal']}"),
    ("met", lambda t: _report.DASH if t["met"] is None else ("yes" if t["met"] else "**no**")),
]


def _row(what: str, value: Optional[float], op: str, goal: float, layout: str = "all",
         key: Optional[str] = None, display: Optional[str] = None) -> dict:
    met = None if value is None else (value <= goal if op == "<=" else value >= goal)
    return {"what": what, "layout": layout, "key": key, "value": value, "op": op, "goal": goal,
            "met": met, "display": display}


def _count_row(what: str, bad: list, n: int) -> dict:
    """A row whose value is how many of n rows fail (goal: none)."""
    return _row(what, len(bad) if n else None, "<=", 0,
                display=("none" if not bad else f"{len(bad)} rows") if n else None)


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _case_name(c: dict) -> str:
    return (f"{_report.case_label(c)} {c['N']}×{c['C']}×{c['H']}×{c['W']} {c['dtype']} "
            f"{c['layout']} {c['pass']}")


def _slower(c: dict, baselines: Sequence[str]) -> bool:
    return any(c.get(f"speedup_{b}") is not None and c[f"speedup_{b}"] < 1.0 for b in baselines)


def cpu_case_targets(cases: List[dict]) -> List[dict]:
    out = []
    for name, n, pass_, key, op, goal, what in CPU_CASE_TARGETS:
        for c in cases:
            if (c["name"], c["N"], c["pass"], c["dtype"], c["residual"]) == \
                    (name, n, pass_, "float32", False):
                out.append(_row(f"{name} {n}×{c['C']}×{c['H']}×{c['W']}: {what}", c.get(key),
                                op, goal, layout=c["layout"], key=key))
    return out


def cpu_run_targets(cases: List[dict], train_batch: int) -> Tuple[List[dict], List[str]]:
    """The CPU targets over every case of the run, and one line per case that misses one."""
    fp32 = [c for c in cases if c["dtype"] == "float32"]
    compared = [c for c in fp32 if c.get("speedup_eager") is not None]
    slower = [c for c in compared if _slower(c, ("eager", "compile"))]
    n_compile = sum(c.get("speedup_compile") is not None for c in compared)
    rows = [_count_row(f"float32, every case and pass ({len(compared)}, {n_compile} with "
                       "compile): slower than eager or compile", slower, len(compared))]
    misses = [f"slower: {_case_name(c)}: fused {_report.ms(c['fused_ms'])} ms, eager "
              f"{_report.ms(c['eager_ms'])}, compile {_report.ms(c.get('compile_ms'))}"
              for c in slower]
    for pass_, goal in (("forward", 1.5), ("fwd+bwd", 2.0)):
        v = [c["speedup_eager"] for c in compared if c["pass"] == pass_]
        rows.append(_row(f"float32 {pass_}: geomean speedup vs eager ({len(v)} cases)",
                         _geomean(v) if v else None, ">=", goal))
    short = [c for c in fp32 if c["pass"] == "forward" and c["N"] == train_batch
             and (c["H"], c["W"]) in ((7, 7), (14, 14)) and c.get("fused_over_copy")]
    rows.append(_row(f"float32 forward, 7×7 and 14×14, N = {train_batch}: worst fused / "
                     f"x.clone() ({len(short)} cases)",
                     max((c["fused_over_copy"] for c in short), default=None), "<=", 2.0))
    misses += [f"forward > 2× clone: {_case_name(c)}: {c['fused_over_copy']:.2f}× (fused "
               f"{_report.ms(c['fused_ms'])} ms, clone {_report.ms(c['copy_ms'])})"
               for c in short if c["fused_over_copy"] > 2.0]
    bf16 = [c for c in cases if c["dtype"] == "bfloat16" and c["pass"] == "forward"
            and c.get("speedup_eager") is not None]
    if bf16:
        rows.append(_row(f"bfloat16 forward: slowest speedup vs eager ({len(bf16)} cases; "
                         f"geomean {_geomean([c['speedup_eager'] for c in bf16]):.2f}×)",
                         min(c["speedup_eager"] for c in bf16), ">=", 1.0))
        misses += [f"bf16 slower than eager: {_case_name(c)}: fused "
                   f"{_report.ms(c['fused_ms'])} ms, eager {_report.ms(c['eager_ms'])}"
                   for c in bf16 if c["speedup_eager"] < 1.0]
    return rows, misses


def gpu_targets(cases: List[dict], train_batch: int) -> List[dict]:
    rows = []
    for pass_, goal in (("forward", 0.85), ("backward", 0.80)):
        v = [c["roofline_fraction"] for c in cases if c["pass"] == pass_
             and c["N"] == train_batch and c.get("roofline_fraction")]
        rows.append(_row(f"{pass_} at batch {train_batch}: geomean fraction of the copy "
                         f"roofline ({len(v)} cases)", _geomean(v) if v else None, ">=", goal))
    slower = [c for c in cases if _slower(c, ("compile", "compile_autotune"))]
    n = sum(c.get("speedup_compile") is not None for c in cases)
    rows.append(_count_row(f"every case and pass with torch.compile ({n}): slower than compile",
                           slower, n))
    one = [c["speedup_eager"] for c in cases if c["pass"] == "forward" and c["N"] == 1
           and c.get("speedup_eager")]
    rows.append(_row(f"batch 1 forward: slowest speedup vs eager ({len(one)} cases)",
                     min(one) if one else None, ">=", 3.0))
    return rows


def evaluate(result: dict) -> Tuple[List[dict], List[str]]:
    """(rows of the targets table, one line per case that misses a target)."""
    cases, batch = result["cases"], result["train_batch"]
    if result.get("device_type") == "cuda":
        return gpu_targets(cases, batch), []
    rows, misses = cpu_run_targets(cases, batch)
    return cpu_case_targets(cases) + rows, misses


def section(result: dict, misses_link: Optional[str] = None) -> List[str]:
    """Markdown lines of the targets table and the misses; with misses_link, the misses
    are counted and linked instead of listed."""
    rows, misses = evaluate(result)
    if not rows:
        return []
    kind = "GPU" if result.get("device_type") == "cuda" else "CPU"
    lines = ["", f"### Targets ({kind})", "", _report.table(COLUMNS, rows)]
    if misses and misses_link:
        lines += ["", f"{len(misses)} cases miss a target: listed in [{misses_link}]"
                      f"({misses_link})."]
    elif misses:
        lines += ["", "Cases that miss a target:", *[f"- {m}" for m in misses]]
    return lines


def is_bench_result(result: dict) -> bool:
    return isinstance(result, dict) and "cases" in result and "train_batch" in result


def _load(path: Path) -> Optional[dict]:
    result = json.loads(path.read_text())
    return result if is_bench_result(result) else None


def main(argv=None) -> int:
    paths = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        sys.exit(__doc__.split("\n\n")[1])
    for path in paths:
        if path.is_dir():  # bench_se.py writes one file per device: take the latest run
            found = sorted((p for p in path.glob("*.json") if _load(p)),
                           key=lambda p: p.stat().st_mtime)
            if not found:
                print(f"{path}: no bench_se.py result")
                continue
            path = found[-1]
        result = _load(path)
        if result:
            print(f"## {path.name}: {result['device']}")
            print("\n".join(section(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
