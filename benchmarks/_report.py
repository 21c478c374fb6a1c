"""Markdown tables and atomic file writes for the benchmark's results."""
import json
import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

DASH = "–"


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename over path, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n"))


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def image_paths(json_path: Path) -> List[Path]:
    """The PNGs plot.py draws beside a result."""
    stem = json_path.with_suffix("")
    return [stem.with_name(f"{stem.name}-{kind}.png") for kind in ("speedup", "roofline")]


# --- number formats


def ms(v: Optional[float]) -> str:
    if v is None:
        return DASH
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def ratio(v: Optional[float]) -> str:
    return DASH if v is None else f"{v:.2f}×"


def percent(v: Optional[float]) -> str:
    return DASH if v is None else f"{100 * v:.0f}%"


def number(v: Optional[float]) -> str:
    return DASH if v is None else f"{v:.0f}" if abs(v) >= 10 else f"{v:.2g}"


def table(columns: Sequence[Tuple[str, Callable[[dict], str]]], rows: List[dict]) -> str:
    head = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


# --- the result's tables


def case_label(c: dict) -> str:
    return c["name"] + (" +res" if c.get("residual") else "")


def case_columns(cuda: bool):
    cols = [
        ("case", case_label),
        ("N×C×H×W", lambda c: f"{c['N']}×{c['C']}×{c['H']}×{c['W']}"),
        ("R", lambda c: str(c["R"])),
        ("dtype", lambda c: c["dtype"]),
        ("layout", lambda c: c["layout"]),
        ("pass", lambda c: c["pass"]),
        ("fused ms", lambda c: ms(c["fused_ms"])),
        ("eager ms", lambda c: ms(c["eager_ms"])),
        ("compile ms", lambda c: ms(c["compile_ms"])),
    ]
    if cuda:
        cols.append(("autotune ms", lambda c: ms(c.get("compile_autotune_ms"))))
    cols += [
        ("vs eager", lambda c: ratio(c["speedup_eager"])),
        ("vs compile", lambda c: ratio(c["speedup_compile"])),
    ]
    if cuda:
        cols.append(("vs autotune", lambda c: ratio(c.get("speedup_compile_autotune"))))
    cols += [
        ("copy ms", lambda c: ms(c["copy_ms"])),
        ("fused/copy", lambda c: ratio(c["fused_over_copy"])),
        ("GB/s", lambda c: number(c["gbps"])),
        ("roofline", lambda c: percent(c["roofline_fraction"])),
    ]
    return cols


MODEL_COLUMNS = [
    ("model", lambda m: m["model"]),
    ("mode", lambda m: m["mode"]),
    ("batch", lambda m: str(m["batch"])),
    ("dtype", lambda m: m["dtype"]),
    ("layout", lambda m: m["layout"]),
    ("SE blocks fused", lambda m: str(m.get("se_blocks_fused", DASH))),
    ("eager img/s", lambda m: number(m.get("eager_images_per_s"))),
    ("fused img/s", lambda m: number(m.get("fused_images_per_s"))),
    ("speedup", lambda m: ratio(m.get("speedup"))),
    ("rel. Δ logits", lambda m: DASH if m.get("logits_rel_diff") is None
     else f"{m['logits_rel_diff']:.1e}"),
]

def markdown(result: dict, images: Sequence[str] = (), before_cases: Sequence[str] = ()) -> str:
    """The result as markdown; before_cases: lines put ahead of the case table (the
    targets section of scripts/targets.py, which the measuring code does not compute)."""
    cuda = result.get("device_type") == "cuda"
    short = result["commit"][:12] + ("-dirty" if result["commit"].endswith("-dirty") else "")
    lines = [
        f"## se_fused benchmark: {result['device']}",
        "",
        f"- device: **{result['device']}** ({result['device_type']}, {result['threads']} torch "
        f"threads); torch {result['torch']}, CUDA {result['cuda'] or 'none'}"
        + ("; CPU allocator on transparent huge pages (`THP_MEM_ALLOC_ENABLE=1`)"
           if result.get("thp_alloc") else ""),
        f"- commit `{short}`, csrc sha256 `{result['csrc_sha256'][:16]}`, {result['date']}, "
        f"`{' '.join(result['argv'])}` ({'quick' if result['quick'] else 'full'})",
        f"- roofline: device copy `dst.copy_(src)` of {result['copy_MiB']} MiB = "
        f"**{result['copy_GBps']:.1f} GB/s**; roofline = floor bytes / fused time / that",
        "- floor bytes: forward 2·|x|, backward 3·|x|, fwd+bwd 5·|x| (+|residual| per pass "
        "for +res cases)",
        "- copy ms: `x.clone()` of the same tensor, allocation included as for the ops; "
        "fused/copy at the floor = 1 (forward), 1.5 (backward), 2.5 (fwd+bwd)",
        f"- timing: {result['timing']}; inputs rotated when they fit in "
        f"{result['cache_MiB']} MiB of cache: {'yes' if result['rotate'] else 'no'}",
        "- eager = `se_fused.reference.squeeze_excite`; compile = `torch.compile` of it "
        "(dynamic=False, fullgraph=True)" + ("; autotune = mode=\"max-autotune-no-cudagraphs\""
                                             if cuda else "") + f"; {DASH} = not run",
        "- backward = `torch.autograd.grad` (x, weights, biases) on a retained graph; "
        "forward under `no_grad`",
    ]
    if result.get("warnings"):
        lines += ["", *[f"**Warning: {w}.**" for w in result["warnings"]]]
    if result.get("not_run"):
        lines += ["", "Not run:", *[f"- {n}" for n in result["not_run"]]]
    if result.get("errors"):
        lines += ["", "Errors:", *[f"- {e}" for e in result["errors"]]]
    lines += before_cases
    if result["cases"]:
        lines += ["", "### SE op", "", table(case_columns(cuda), result["cases"])]
    if result.get("models"):
        lines += ["", "### Models (images/s, before and after `replace_se_blocks`)", "",
                  table(MODEL_COLUMNS, result["models"])]
    if images:
        lines += ["", *[f"![{Path(i).stem}]({i})" for i in images]]
    return "\n".join(lines) + "\n"
