#!/usr/bin/env python
"""What the fused SE block saves in memory, and what inplace=True costs in time.

    python benchmarks/memory.py                 # both parts, on whatever device is present
    python benchmarks/memory.py --no-models     # only the in-place timing
    python benchmarks/memory.py --models efficientnet_b0 --batch 8

Part 1, one training step of real networks (torchvision efficientnet_b0,
regnet_y_800mf, mobilenet_v3_large; timm seresnet50) at 224x224, random weights,
in three variants: as built ("eager"), after replace_se_blocks ("fused"), and after
replace_se_blocks(inplace=True) ("fused-inplace"). For each:
  - saved activations: the bytes of every storage autograd saves during the forward
    (torch.autograd.graph.saved_tensors_hooks; a storage saved twice counts once), and
    how much of it is SE block inputs;
  - peak memory of the step over what was allocated before it (CUDA: the allocator's
    peak; CPU: the process's peak RSS over its RSS before the step, each variant in a
    fresh process, with glibc told to mmap large blocks so that freed ones leave the RSS).
FusedSEBlock keeps x until a first backward shows its output is not modified in place
(see se_fused/modules.py), so each fused variant first runs one small warm-up step
(batch 1, 64x64) whose peak stays below the measured one.

Part 2, the forward of inplace=True at (32, 256, 56, 56) in float32, both layouts,
against y.copy_(x) into an existing buffer (same bytes moved, no page faults for a new
output), the out-of-place fused forward and the eager reference. x is restored from a
pristine copy before each timed call (outside the timing) so every call sees the same
values.

Writes benchmarks/results/<device-slug>-memory.{json,md} and prints the markdown.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))

import _env  # noqa: E402

MODELS = ("efficientnet_b0", "regnet_y_800mf", "mobilenet_v3_large", "seresnet50")
VARIANTS = ("eager", "fused", "fused-inplace")
MiB = 2 ** 20


def build(name: str) -> torch.nn.Module:
    if name == "seresnet50":
        import timm
        return timm.create_model("seresnet50", pretrained=False)
    import torchvision
    return getattr(torchvision.models, name)(weights=None)


def se_classes():
    import timm.layers
    import timm.models._efficientnet_blocks as eb
    import torchvision
    import se_fused
    return (torchvision.ops.SqueezeExcitation, timm.layers.SEModule, eb.SqueezeExcite,
            se_fused.SEBlock, se_fused.FusedSEBlock)


def train_step(model, images):
    model.zero_grad(set_to_none=True)
    loss = model(images).float().logsumexp(dim=1).mean()
    loss.backward()
    return loss


def saved_activations(model, images):
    """(all saved bytes, of which SE-input bytes) for one forward, then its backward."""
    se_inputs = set()
    hooks = [m.register_forward_pre_hook(
        lambda mod, args: se_inputs.add(args[0].untyped_storage().data_ptr()))
        for m in model.modules() if isinstance(m, se_classes())]
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    try:
        model.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(images).float().logsumexp(dim=1).mean()
    finally:
        for h in hooks:
            h.remove()
    loss.backward()
    total = sum(storages.values())
    se = sum(n for p, n in storages.items() if p in se_inputs)
    return total, se


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_variant(name: str, variant: str, batch: int, device: torch.device) -> dict:
    """One (model, variant) in this process: saved bytes and peak memory of a step."""
    import se_fused
    torch.manual_seed(0)
    model = build(name).to(device).train()
    if variant != "eager":
        se_fused.replace_se_blocks(model, inplace=variant == "fused-inplace")
        train_step(model, torch.randn(1, 3, 64, 64, device=device))  # FusedSEBlock warm-up
    images = torch.randn(batch, 3, 224, 224, device=device)
    out = dict(model=name, variant=variant, batch=batch)
    try:
        # the peak first: on the CPU it is a high-water mark of the whole process
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            train_step(model, images)
            torch.cuda.synchronize(device)
            out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / MiB
        else:
            base = _rss_bytes()
            train_step(model, images)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out["peak_mib"] = (peak - base) / MiB
        total, se = saved_activations(model, images)
        out.update(saved_mib=total / MiB, se_input_mib=se / MiB)
        if variant != "eager":
            blocks = [m for m in model.modules() if isinstance(m, se_fused.FusedSEBlock)]
            out["blocks_keeping_x"] = sum(1 for m in blocks if m._output_mutated is not False)
            out["blocks"] = len(blocks)
    except RuntimeError as err:  # e.g. an in-place SE over a tensor another layer saved
        out["error"] = str(err).splitlines()[0][:200]
    return out


def run_models(models, batch, device) -> list:
    rows = []
    for name in models:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--_one", name, variant, "--batch", str(batch),
                   "--device", str(device)]
            # glibc keeps freed heap memory in the RSS unless large blocks are mmapped:
            # this makes the CPU peak the step's own, not the allocator's history.
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
            if proc.returncode != 0:
                rows.append(dict(model=name, variant=variant, batch=batch,
                                 error=(proc.stderr.strip().splitlines() or ["failed"])[-1][:200]))
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {name} {variant}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


# --- in-place timing


def time_inplace(device: torch.device, shape=(32, 256, 56, 56), reps=15) -> list:
    import se_fused
    from se_fused import reference
    N, C, H, W = shape
    R = C // 16
    g = torch.Generator().manual_seed(0)
    w1 = (torch.randn(R, C, generator=g) * C ** -0.5).to(device)
    w2 = (torch.randn(C, R, generator=g) * R ** -0.5).to(device)
    b1, b2 = torch.zeros(R, device=device), torch.zeros(C, device=device)
    rows = []
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        pristine = torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt)
        x = pristine.clone()
        buf = torch.empty_like(pristine)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        cases = {
            "fused inplace": lambda: se_fused.squeeze_excite(x, w1, b1, w2, b2, inplace=True),
            "y.copy_(x)": lambda: buf.copy_(x),
            "fused": lambda: se_fused.squeeze_excite(x, w1, b1, w2, b2),
            "eager": lambda: reference.squeeze_excite(x, w1, b1, w2, b2),
        }
        times = {k: [] for k in cases}
        with torch.no_grad():
            for _ in range(reps + 2):  # interleaved, so drifts hit every case alike
                for name, fn in cases.items():
                    x.copy_(pristine)
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v[2:]) * 1e3 for k, v in times.items()}
        rows.append(dict(layout=layout, shape=list(shape), ms=med,
                         inplace_over_copy=med["fused inplace"] / med["y.copy_(x)"],
                         eager_over_inplace=med["eager"] / med["fused inplace"]))
    return rows


# --- report


def markdown(result) -> str:
    lines = [f"# Memory: {result['env']['device']}", "",
             f"torch {result['env'].get('torch')}, commit {result['env'].get('commit')}, "
             f"threads {result['env'].get('threads')}", ""]
    if result.get("models"):
        lines += ["## One training step, batch %d, 224x224" % result["batch"], "",
                  "| model | variant | saved activations (MiB) | of which SE inputs | change vs eager "
                  "| peak over start (MiB) | blocks keeping x |",
                  "|---|---|---|---|---|---|---|"]
        base = {r["model"]: r.get("saved_mib") for r in result["models"] if r["variant"] == "eager"}
        for r in result["models"]:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['variant']} | error: {r['error']} | | | | |")
                continue
            b = base.get(r["model"])
            change = f"{100 * (r['saved_mib'] / b - 1):+.1f} %" if b and r["variant"] != "eager" else ""
            keep = f"{r['blocks_keeping_x']}/{r['blocks']}" if "blocks" in r else ""
            lines.append(f"| {r['model']} | {r['variant']} | {r['saved_mib']:.1f} | "
                         f"{r['se_input_mib']:.1f} | {change} | {r['peak_mib']:.0f} | {keep} |")
        lines.append("")
    if result.get("inplace"):
        lines += ["## Forward of inplace=True, float32, ms (median)", "",
                  "| layout | shape | fused inplace | y.copy_(x) | fused | eager | inplace / copy "
                  "| eager / inplace |", "|---|---|---|---|---|---|---|---|"]
        for r in result["inplace"]:
            m = r["ms"]
            lines.append(f"| {r['layout']} | {'x'.join(map(str, r['shape']))} | "
                         f"{m['fused inplace']:.2f} | {m['y.copy_(x)']:.2f} | {m['fused']:.2f} | "
                         f"{m['eager']:.2f} | {r['inplace_over_copy']:.2f}x | "
                         f"{r['eager_over_inplace']:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--no-inplace", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args._one:
        print(json.dumps(measure_variant(*args._one, args.batch, device)))
        return 0
    result = dict(env=_env.environment(device), batch=args.batch)
    if not args.no_models:
        result["models"] = run_models([m for m in args.models.split(",") if m], args.batch, device)
    if not args.no_inplace:
        result["inplace"] = time_inplace(device)
    md = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = result["env"]["device_slug"] + "-memory"
    (args.out / f"{slug}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.out / f"{slug}.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
