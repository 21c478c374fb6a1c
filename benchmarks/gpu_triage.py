#!/usr/bin/env python
"""The model's falsifiable predictions against a first GPU run, in about a minute.

    python benchmarks/gpu_triage.py [--budget 90] [--out DIR]

For a handful of cases chosen to test the model (benchmarks/gpu_model.py) where it is
least sure: a batch-1 case (host-bound), a batch that fits in L2, a mid-sized one, the
channels_last 7x7 case where the model is least sure of the small layers' loops (also
with SE_FUSED_CUDA_SAMPLES=2), the L2-fitting case with programmatic dependent launch off
(SE_FUSED_CUDA_PDL=0, predicted slower), |x| eight
times L2 (parity with compile predicted), and the fp32 case where the model says the
old v2 schedule would have won. Each is timed with CUDA events, inputs rotated beyond
L2 (bench_se.py's timer and inputs): fused, torch.compile of the reference (while the
budget lasts: compiling takes tens of seconds) and x.clone(), with the copy bandwidth
measured in the same run. The table, printed last, puts each measurement beside the
model's prediction for this GPU; the JSON under --out keeps everything.

Without a GPU it prints the predictions alone, the measured columns marked skipped.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import _timing  # noqa: E402
import bench_se  # noqa: E402
import gpu_model  # noqa: E402

# (shape name, batch, dtype, layout, knobs: environment variables of the plan), in order
# of importance: torch.compile (tens of seconds to compile) only while the budget lasts,
# so a short budget drops the last ones' first; a row with knobs is compared with the
# same case's default row (and its own prediction), not with compile.
CASES = (
    ("MobileNetV3-Large b14-15", gpu_model.TRAIN_BATCH, torch.bfloat16, "channels_last", {}),
    ("EfficientNet-B0 s6.0", gpu_model.TRAIN_BATCH, torch.bfloat16, "channels_last", {}),
    ("SE-ResNet-50 s4", 1, torch.float32, "nchw", {}),
    ("SE-ResNet-50 s4", gpu_model.TRAIN_BATCH, torch.bfloat16, "channels_last", {}),
    ("MobileNetV3-Large b14-15", gpu_model.TRAIN_BATCH, torch.bfloat16, "channels_last",
     {"SE_FUSED_CUDA_SAMPLES": "2"}),
    ("EfficientNet-B0 s6.0", gpu_model.TRAIN_BATCH, torch.bfloat16, "channels_last",
     {"SE_FUSED_CUDA_PDL": "0"}),
    ("SE-ResNet-50 s1", gpu_model.TRAIN_BATCH, torch.bfloat16, "channels_last", {}),
    ("EfficientNet-B0 s1.0", gpu_model.TRAIN_BATCH, torch.float32, "nchw", {}),
)
COMPILE_SECONDS = 45  # no torch.compile once less than this is left of the budget


def triage_cases():
    by_key = {(c.shape.name, c.N, c.dtype, c.layout): c
              for c in gpu_model.gpu_cases() if not c.residual}
    return [(by_key[(name, n, dtype, layout)], knobs)
            for name, n, dtype, layout, knobs in CASES]


def model_gpu(name: str) -> str:
    return "H200" if "H200" in name else "H100"


def predict(case, gname: str, knobs: dict) -> dict:
    g = gpu_model.GPUS[gname]
    variant = dict(samples2=int(knobs.get("SE_FUSED_CUDA_SAMPLES", 0)),
                   pdl=knobs.get("SE_FUSED_CUDA_PDL", "1") != "0")
    out = {}
    for pass_ in gpu_model.PASSES:
        out[pass_] = {"fused_us": gpu_model.fused(case, g, pass_, **variant).us,
                      "compile_us": gpu_model.compiled(case, g, pass_).us,
                      "floor_us": gpu_model.floor_us(case, g, pass_),
                      "v2_us": gpu_model.v2(case, g, pass_)}
    return out


def measure(case, knobs: dict, timer, compile_ok: bool) -> dict:
    """us per (backend, pass) and the clone; errors as strings."""
    import se_fused
    device = torch.device("cuda")
    inputs = bench_se.make_inputs(case, device, rotate=True)
    out = {"errors": {}}
    clone = _timing.cycle(lambda s: s.x.clone(), inputs.sets)
    out["clone_us"] = 1e3 * timer(clone)
    backends = [("fused", se_fused.squeeze_excite)]
    if compile_ok:
        torch._dynamo.reset()
        backends.append(("compile", torch.compile(se_fused.reference.squeeze_excite,
                                                  dynamic=False, fullgraph=True)))
    os.environ.update(knobs)
    try:
        rel = bench_se.fused_rel_error(case, inputs)
        if not rel <= bench_se.REL_TOLERANCE[case.dtype]:
            out["errors"]["fused"] = f"differs from the reference: relative error {rel:.1e}"
        for name, op in backends:
            call = bench_se.bind(op, case, inputs.weights)
            for pass_ in gpu_model.PASSES:
                try:
                    fn = bench_se.PASS_BUILDERS[pass_](call, inputs)
                    out[f"{name}_{pass_}_us"] = 1e3 * timer(fn)
                except Exception as err:  # recorded; the other backends still run
                    out["errors"][f"{name} {pass_}"] = bench_se.describe_error(err)
            torch.cuda.synchronize()
    finally:
        for k in knobs:
            os.environ.pop(k, None)
    del inputs
    torch.cuda.empty_cache()
    return out


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def table(results, gname: str, copy_gbps) -> list:
    lines = [f"Model predictions ({gname}) vs this run; us; 'meas/model' > 1: slower than "
             "predicted",
             f"copy bandwidth: measured {fmt(copy_gbps)} GB/s, model "
             f"{gpu_model.GPUS[gname].copy_bw / 1e9:.0f} GB/s",
             f"{'case':66s} {'pass':8s} {'clone':>7s} {'fused':>7s} {'model':>7s} "
             f"{'meas/mod':>8s} {'compile':>8s} {'model':>7s} {'f/c meas':>8s} {'f/c mod':>7s} "
             f"{'%floor':>6s} {'model':>6s}"]
    for r in results:
        for pass_ in gpu_model.PASSES:
            p = r["model"][pass_]
            m = r.get("measured") or {}
            fu, co = m.get(f"fused_{pass_}_us"), m.get(f"compile_{pass_}_us")
            floor = (r["floor_bytes"][pass_] / (copy_gbps * 1e3)) if copy_gbps else None
            lines.append(
                f"{r['label'][:66]:66s} {pass_:8s} {fmt(m.get('clone_us')):>7s} {fmt(fu):>7s} "
                f"{p['fused_us']:7.1f} {fmt(fu / p['fused_us'] if fu else None, '.2f'):>8s} "
                f"{fmt(co):>8s} {p['compile_us']:7.1f} "
                f"{fmt(co / fu if fu and co else None, '.2f'):>8s} "
                f"{p['compile_us'] / p['fused_us']:7.2f} "
                f"{fmt(100 * floor / fu if fu and floor else None, '.0f'):>6s} "
                f"{100 * p['floor_us'] / p['fused_us']:6.0f}")
        for k, v in (r.get("measured") or {}).get("errors", {}).items():
            lines.append(f"    error: {k}: {v}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=90.0, help="seconds for the whole run")
    p.add_argument("--out", type=Path, help="folder for gpu_triage.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    gpu = torch.cuda.is_available()
    gname = model_gpu(torch.cuda.get_device_name()) if gpu else "H200"
    results = []
    copy_gbps = None
    timer = _timing.CUDATimer(rep_ms=30.0, warmup_ms=10.0, min_reps=5) if gpu else None
    if gpu:
        torch.backends.cudnn.benchmark = True
        device = torch.device("cuda")
        copy_gbps = _timing.copy_bandwidth(device, timer)
    for case, knobs in triage_cases():
        label = " ".join([case.label.replace("channels_last", "CL")]
                         + [f"{k.replace('SE_FUSED_CUDA_', '')}={v}" for k, v in knobs.items()])
        r = {"label": label, "knobs": knobs, "model": predict(case, gname, knobs),
             "floor_bytes": {q: case.floor_bytes(q) for q in gpu_model.PASSES}}
        if gpu:
            left = args.budget - (time.perf_counter() - t0)
            if left < 5:
                r["measured"] = {"errors": {"all": "not run: budget spent"}}
            else:
                try:
                    r["measured"] = measure(case, knobs, timer,
                                            not knobs and left > COMPILE_SECONDS)
                except Exception as err:
                    r["measured"] = {"errors": {"all": bench_se.describe_error(err)}}
                print(f"gpu_triage: {label} done at {time.perf_counter() - t0:.0f}s",
                      file=sys.stderr, flush=True)
        results.append(r)
    lines = table(results, gname, copy_gbps)
    if not gpu:
        lines.insert(0, "gpu_triage: no CUDA device: measured columns SKIPPED, model only")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_triage.json").write_text(json.dumps(
            {"gpu": torch.cuda.get_device_name() if gpu else None, "model_gpu": gname,
             "copy_GBps": copy_gbps, "results": results}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
