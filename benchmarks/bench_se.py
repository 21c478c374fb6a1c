#!/usr/bin/env python
"""How much faster is the fused SE block, and how close to the hardware's limit is it?

    python benchmarks/bench_se.py            # --quick: the key cases, minutes on a small CPU
    python benchmarks/bench_se.py --full     # every network shape, batch, layout and dtype
    python benchmarks/bench_se.py --dry-run --device cuda   # the plan, without running it

Times se_fused.squeeze_excite ("fused") against the pure PyTorch reference
("eager") and torch.compile of the reference, for the forward, the backward
and forward+backward, on the SE shapes of real networks (shapes.py), on
whatever device is present. Each case also gets the floor in bytes, the
achieved GB/s and the fraction of a roofline measured in the same run (a
large device-to-device copy), and the time of x.clone() of the same tensor.
Then whole networks (models.py): images/s before and after replace_se_blocks.

Writes benchmarks/results/<device-slug>.{json,md} and two PNGs beside them,
and prints the markdown on stdout (the progress bar goes to stderr). It measures
only: scripts/targets.py checks the project's targets against the JSON, and
scripts/update_readme.py publishes it.
"""
import time

_T0 = time.perf_counter()  # the result's wall_s counts from here, imports included

import argparse  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional, Sequence, Tuple  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
# This checkout's se_fused first, before any installed one (make's .pth file may
# point at another checkout): the results must be those of the csrc/ they record.
sys.path.insert(0, str(HERE.parent))

import _env  # noqa: E402
import _report  # noqa: E402
import _timing  # noqa: E402
# gpu_model.py and gpu_triage.py reach the plan and the measuring through this module.
from _cases import (DTYPE_NAMES, PASSES, Case, default_train_batch, formats,  # noqa: E402,F401
                    parse_formats, plan)
from _run import (PASS_BUILDERS, REL_TOLERANCE, bind, describe_error,  # noqa: E402,F401
                  fused_rel_error, make_inputs, run_case)

# --- model level


def model_plan(device: torch.device, quick: bool, batch: Optional[int], train_batch: int,
               names: Optional[str] = None):
    """(model names, modes, batch): --quick on a CPU is inference of two models at batch 2."""
    import models
    if device.type == "cpu" and quick:
        plan_ = ["se_resnet50", "efficientnet_b0"], ("inference",), batch or 2
    else:
        plan_ = list(models.MODELS), ("inference", "train"), batch or train_batch
    if names:
        wanted = names.split(",")
        unknown = set(wanted) - set(models.MODELS)
        if unknown:
            sys.exit(f"bench_se: unknown model(s) {sorted(unknown)}; known: {list(models.MODELS)}")
        plan_ = (wanted, *plan_[1:])
    return plan_


def run_models(device, args, train_batch, timer, progress) -> Tuple[List[dict], List[str]]:
    import models
    names, modes, batch = model_plan(device, args.quick, args.model_batch, train_batch, args.models)
    amp = torch.bfloat16 if device.type == "cuda" else None
    rows, errors = [], []
    for name in progress(names, desc="models"):
        try:
            rows += models.bench_model(name, device, batch, timer, modes, amp_dtype=amp,
                                       channels_last=device.type == "cuda")
        except Exception as err:
            errors.append(f"model {name}: {describe_error(err)}")
    return rows, errors


# --- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="the target cases and a few more (default; < 3 min on 2 CPU cores)")
    size.add_argument("--full", dest="quick", action="store_false",
                      help="every distinct network shape x batch x format, compile everywhere")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    p.add_argument("--compile", default="auto", choices=("auto", "targets", "all", "none"),
                   help="cases timed with torch.compile: auto = targets in --quick, all in --full")
    p.add_argument("--train-batch", type=int, help="training batch (default: 32 CPU, 128/256 GPU)")
    p.add_argument("--model-batch", type=int, help="batch of the model-level runs")
    p.add_argument("--filter", help="only cases whose label matches this regex")
    p.add_argument("--min-run-time", type=float,
                   help="CPU seconds per (backend, pass), split over --rounds")
    p.add_argument("--rounds", type=int, default=3,
                   help="CPU: time each (backend, pass) this many times in turn, report the "
                        "median (default 3)")
    p.add_argument("--models", help="comma-separated models to run (default: by --quick/--full)")
    p.add_argument("--no-models", action="store_true", help="skip the model-level benchmark")
    p.add_argument("--no-rotate", action="store_true",
                   help="time every call on the same inputs (warm cache for small cases)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder for the results")
    p.add_argument("--formats", type=parse_formats,
                   help="DTYPE:LAYOUT list replacing the device's formats, e.g. "
                        "float32:nchw,bfloat16:channels_last")
    p.add_argument("--rep-ms", type=float,
                   help="GPU: milliseconds of calls per measurement (default 100 --quick, "
                        "500 --full)")
    p.add_argument("--time-budget", type=float,
                   help="seconds: start no new case (nor the models) after this much wall "
                        "time; the cases left out are listed under 'Not run'")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p.parse_args(argv)


def resolve_device(name: str, dry_run: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        if not dry_run:
            sys.exit("bench_se: --device cuda, but torch.cuda.is_available() is False")
    elif device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    elif device.type not in ("cpu", "cuda"):
        sys.exit(f"bench_se: --device must be cpu or cuda[:N], got {name}")
    return device


def print_plan(cases: Sequence[Case], device, quick, args, train_batch) -> None:
    for c in cases:
        print(f"{c.label:70s} compile: {', '.join(c.compile_backends) or '-'}")
    if not args.no_models:
        names, modes, batch = model_plan(device, quick, args.model_batch, train_batch, args.models)
        print(f"models: {', '.join(names)}; {', '.join(modes)}; batch {batch}")
    print(f"{len(cases)} cases, {sum(len(c.passes) for c in cases)} (case, pass) pairs on {device}")


def not_run_notes(device, cases, result, args) -> List[str]:
    notes = []
    if device.type != "cuda":
        notes.append("GPU paths (CUDA-event timer, bf16/fp16 channels_last, training batch "
                     "128/256, torch.compile mode=\"max-autotune-no-cudagraphs\", AMP models): "
                     "no CUDA device in this run")
    no_compile = sum(not c.compile_backends for c in cases)
    if no_compile:
        notes.append(f"torch.compile: not timed on {no_compile} of {len(cases)} cases "
                     f"({'--quick' if args.quick else '--compile ' + args.compile}; "
                     f"{_report.DASH} in its columns)")
    if args.quick:
        notes.append("--quick: a subset of shapes, batches and formats (--full runs all)")
    over = getattr(args, "over_budget", [])
    if over:
        notes.append(f"--time-budget {args.time_budget:g} s: {len(over)} left out: "
                     + "; ".join(over))
    if args.no_models and "the model-level runs" not in over:
        notes.append("models: skipped (--no-models)")
    elif result["models"] and not any(m["mode"] == "train" for m in result["models"]):
        notes.append("models: training step not timed (--quick on a CPU)")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device, args.dry_run)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    elif torch.cuda.is_available():
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    train_batch = args.train_batch or default_train_batch(device)
    cases = plan(device.type, args.quick, train_batch, args.compile, args.formats)
    if args.filter:
        cases = [c for c in cases if re.search(args.filter, c.label)]
    if args.dry_run:
        print_plan(cases, device, args.quick, args, train_batch)
        return 0

    from tqdm import tqdm

    torch.manual_seed(0)
    timer = _timing.make_timer(device, args.quick)
    if args.min_run_time and isinstance(timer, _timing.CPUTimer):
        timer.min_run_time = args.min_run_time
    if args.rep_ms and isinstance(timer, _timing.CUDATimer):
        timer.rep_ms = args.rep_ms
    if args.time_budget:
        # Under a budget, breadth first: every shape at batch 1 (fast), then every shape at
        # the training batch, one format after the other, so a cut loses whole formats.
        fmts = args.formats or formats(device.type)
        cases.sort(key=lambda c: (c.N != 1, fmts.index((c.dtype, c.layout))
                                  if (c.dtype, c.layout) in fmts else len(fmts), c.residual))
    env = _env.environment(device)
    copy_bytes = max(256 * _timing.MiB, 8 * _timing.cache_bytes(device))
    copy_gbps = _timing.copy_bandwidth(device, timer, copy_bytes)
    rows = []
    args.over_budget = []
    for case in (bar := tqdm(cases, desc="SE cases", unit="case", file=sys.stderr)):
        if args.time_budget and time.perf_counter() - _T0 > args.time_budget:
            args.over_budget.append(case.label)
            continue
        bar.set_postfix_str(case.label)
        rows += run_case(case, device, timer, copy_gbps, rotate=not args.no_rotate,
                         rounds=args.rounds)
    if args.time_budget and time.perf_counter() - _T0 > args.time_budget:
        args.no_models = True
        args.over_budget.append("the model-level runs")
    models_rows, model_errors = ([], []) if args.no_models else run_models(
        device, args, train_batch, timer,
        lambda it, desc: tqdm(it, desc=desc, file=sys.stderr))

    result = assemble(env, device, args, argv, timer, copy_bytes, copy_gbps, train_batch,
                      cases, rows, models_rows, model_errors)
    write_outputs(result, args.out)
    failed = any(r["errors"] and ("fused" in r["errors"] or "eager" in r["errors"]) for r in rows)
    return 1 if failed or model_errors else 0


def assemble(env, device, args, argv, timer, copy_bytes, copy_gbps, train_batch, cases, rows,
             models_rows, model_errors) -> dict:
    import se_fused
    result = {
        **env,
        "device_type": device.type,
        "argv": ["bench_se.py", *(argv if argv is not None else sys.argv[1:])],
        "quick": args.quick,
        "se_fused": str(Path(se_fused.__file__).parent),
        "timing": timer.describe(),
        "rotate": not args.no_rotate,
        "cache_MiB": round(_timing.cache_bytes(device) / _timing.MiB, 1),
        "copy_MiB": copy_bytes // _timing.MiB,
        "copy_GBps": copy_gbps,
        "train_batch": train_batch,
        "cases": rows,
        "models": models_rows,
        "errors": [f"{r['name']} N={r['N']} {r['dtype']} {r['layout']}: {b}: {e}"
                   for r in rows if r["pass"] == PASSES[0] for b, e in (r["errors"] or {}).items()]
                  + model_errors,
        "load_after": _env.load_average(),
    }
    result["not_run"] = not_run_notes(device, cases, result, args)
    busy = _env.busy_warning(result["load_before"], result["load_after"])
    result["warnings"] = [busy] if busy and device.type == "cpu" else []
    if Path(se_fused.__file__).resolve().parent.parent != HERE.parent:
        result["warnings"].append(f"se_fused came from {result['se_fused']}, not from this "
                                  "checkout, whose csrc/ the commit and hash above describe")
    if hasattr(timer, "load_summary"):
        result["timer_load"] = load = timer.load_summary()
        if load["contended"]:
            result["warnings"].append(
                f"{load['contended']} of {load['measurements']} measurements had other "
                f"processes using the CPU even after {timer.retries} retries")
    result["wall_s"] = round(time.perf_counter() - _T0, 1)  # plots and files not included
    return result


def write_outputs(result: dict, out: Path) -> None:
    """<slug>.json, the PNGs, <slug>.md (each written atomically); the markdown to stdout."""
    import plot
    json_path = out / f"{result['device_slug']}.json"
    _report.write_json(json_path, result)
    pngs = plot.plot_result(result, json_path)
    text = _report.markdown(result, [p.name for p in pngs])
    _report.write_text(json_path.with_suffix(".md"), text)
    print(text)
    print(f"wrote {json_path}, {json_path.with_suffix('.md').name}, "
          f"{', '.join(p.name for p in pngs)} ({result['wall_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
