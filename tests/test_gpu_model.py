"""The GPU performance model (benchmarks/gpu_model.py), on the CPU.

The model predicts H100/H200 times of the v3 CUDA design, torch.compile and the floor; it
is not GPU evidence. These tests run it: its JSON rows, its coverage of bench_se.py's GPU
cases, the targets of issue 16 as the model predicts them for the default design, and the
coarse v2 model against the ranges of the v2 review it comes from.
"""
import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_se  # noqa: E402
import gpu_model  # noqa: E402

REQUIRED_KEYS = {"case", "gpu", "pass", "fused_us", "compile_us", "floor_us", "eager_us",
                 "bytes", "pct_of_floor", "fits_half_l2", "v2_us", "speedup_compile"}


@pytest.fixture(scope="module")
def rows():
    return gpu_model.rows()


@pytest.fixture(scope="module")
def targets(rows):
    return {t["what"].split(" (")[0].split(":")[0]: t for t in gpu_model.check_targets(rows)}


def test_json_rows_have_the_keys_the_issue_names(capsys):
    assert gpu_model.main(["--json", "--filter", r"^SE-ResNet-50 s4 1x"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out and all(REQUIRED_KEYS <= set(r) for r in out)
    assert {r["gpu"] for r in out} == {"H100", "H200"}
    assert {r["pass"] for r in out} == {"forward", "backward"}


def test_table_prints_targets_and_the_v2_verdict(capsys):
    assert gpu_model.main(["--filter", r"^SE-ResNet-50 s4 256x"]) == 0
    text = capsys.readouterr().out
    assert "every case: fused / torch.compile" in text and "v2 (persistent" in text


def test_every_gpu_case_of_bench_se_has_rows_for_both_gpus_and_passes(rows):
    labels = {c.label for c in bench_se.plan("cuda", False, gpu_model.TRAIN_BATCH, "none")}
    got = {}
    for r in rows:
        got.setdefault(r["case"], set()).add((r["gpu"], r["pass"]))
    assert set(got) == labels
    want = {(g, p) for g in ("H100", "H200") for p in ("forward", "backward")}
    assert all(v == want for v in got.values())
    assert {r["N"] for r in rows} == {1, gpu_model.TRAIN_BATCH}
    assert {(r["dtype"], r["layout"]) for r in rows} >= {("float32", "nchw"),
                                                        ("bfloat16", "channels_last")}


def test_no_prediction_beats_the_floor_and_times_are_finite(rows):
    for r in rows:
        for key in ("fused_us", "compile_us", "v2_us", "fused_plain_us"):
            assert math.isfinite(r[key]) and r[key] >= r["floor_us"], (key, r["case"])
        assert r["fits_half_l2"] == (r["x_bytes"] <= gpu_model.GPUS[r["gpu"]].l2.value / 2)
        # at least the floor's bytes; at most every tensor read by both kernels (no L2 reuse:
        # forward x twice; backward g and the relu mask y twice, v once) plus the partials
        X, res = r["x_bytes"], int(r["residual"])
        no_reuse = 3 * X + res * X if r["pass"] == "forward" else (4 + 3 * res) * X
        assert r["bytes"] <= r["fused_hbm_bytes"] <= no_reuse + 8 * r["N"] * r["C"] * 64


def test_l2_reuse_lowers_the_fused_bytes_when_x_fits():
    big = dataclasses.replace(_case("SE-ResNet-50 s4", torch.bfloat16), N=256)
    fits = gpu_model.fused(big, gpu_model.GPUS["H200"], "forward")
    huge = dataclasses.replace(big, N=4096)
    spills = gpu_model.fused(huge, gpu_model.GPUS["H200"], "forward")
    # 51 MB of x re-read mostly from L2; 822 MB re-read mostly from HBM
    assert fits.hbm_bytes < 2.2 * big.x_bytes
    assert spills.hbm_bytes > 2.8 * huge.x_bytes


def test_default_design_is_never_slower_than_torch_compile(targets):
    t = targets["every case"]
    assert t["met"], t["misses"][:5]


def _all_three(rows):
    return {x["what"].split(" (")[0].split(":")[0]: x
            for x in gpu_model.check_targets(rows, "fused_all_us")}


def test_with_the_three_changes_the_design_meets_the_geomean_eager_and_compile_targets(rows):
    """Launch-2 tiles the model picks, the small layers' chunks of loads run on across a
    thread's loops, and PDL without the memset (NOTES, 'CUDA v3')."""
    t = _all_three(rows)
    for name in ("geomean speedup vs torch.compile", "batch-1 forward", "every case"):
        assert t[name]["met"], (name, t[name]["misses"][:5])
    assert not t["forward, |x| <= L2/2"]["met"]


def test_with_the_three_changes_the_design_meets_the_60_percent_target(rows):
    """Since the sample stage sums 4 outputs' groups at once (sums_of_groups), the model's
    own tiles with chunks run on across loops reach 60 % everywhere (60.2 % worst)."""
    t = _all_three(rows)
    assert t["forward, |x| > L2/2"]["met"], t["forward, |x| > L2/2"]["misses"][:5]


def test_default_design_geomean_over_torch_compile_is_at_least_1_3(targets):
    t = targets["geomean speedup vs torch.compile"]
    assert t["met"] and t["value"] >= 1.3


def test_default_design_batch_1_forward_is_3x_eager(targets):
    t = targets["batch-1 forward"]
    assert t["met"], t["misses"][:5]


@pytest.mark.xfail(strict=True, reason="the model predicts 39 % at worst: two launches, their "
                   "ramps and the last-arrival chain cost more than the 8-15 us floors "
                   "(docs/NOTES.md, 'CUDA v3')")
def test_default_design_forward_reaches_85_percent_of_the_roofline_where_x_fits_half_l2(
        targets):
    assert targets["forward, |x| <= L2/2"]["met"]


@pytest.mark.xfail(strict=True, reason="the model predicts 9 rows below 60 %, 56 % worst: "
                   "the small layers' latency-bound loops and the fixed costs "
                   "(docs/NOTES.md, 'CUDA v3')")
def test_default_design_forward_reaches_60_percent_of_the_roofline_elsewhere(targets):
    assert targets["forward, |x| > L2/2"]["met"]


def _case(name, dtype, layout="channels_last"):
    for c in bench_se.plan("cuda", False, gpu_model.TRAIN_BATCH, "none"):
        if c.shape.name == name and c.dtype == dtype and c.layout == layout and not c.residual:
            return c
    raise LookupError(name)


@pytest.mark.parametrize("name,dtype,layout,lo,hi", [
    # review of v2, section 2 (H100, forward): base (optimistic-pessimistic)
    ("SE-ResNet-50 s1", torch.bfloat16, "channels_last", 1120, 2420),
    ("SE-ResNet-50 s1", torch.bfloat16, "nchw", 560, 1260),
    ("SE-ResNet-50 s4", torch.bfloat16, "nchw", 120, 250),
])
def test_coarse_v2_model_lands_in_the_review_ranges(name, dtype, layout, lo, hi):
    case = dataclasses.replace(_case(name, torch.bfloat16), dtype=dtype, layout=layout,
                               N=gpu_model.TRAIN_BATCH)
    assert lo <= gpu_model.v2(case, gpu_model.GPUS["H100"], "forward") <= hi


def test_every_constant_has_a_source(rows):
    consts = list(gpu_model.C.values()) + [getattr(g, f.name) for g in gpu_model.GPUS.values()
                                           for f in dataclasses.fields(g) if f.name != "name"]
    assert all(c.source.strip() and c.unit for c in consts)
    assert any(c.calibrate for c in consts)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it would time the cases")
def test_triage_prints_the_predictions_with_the_measurements_skipped(capsys):
    import gpu_triage
    assert gpu_triage.main(["--budget", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "SKIPPED" in out[0]
    rows = [line for line in out if line.split()[-1:] and line.split()[-1].isdigit()]
    assert len(rows) == 2 * len(gpu_triage.CASES)


def test_sensitivity_scales_one_constant_at_a_time_and_restores_them():
    cases = [dataclasses.replace(_case("SE-ResNet-50 s4", torch.bfloat16),
                                 N=gpu_model.TRAIN_BATCH)]
    before = ({k: c.value for k, c in gpu_model.C.items()},
              {k: g.l2_bw.value for k, g in gpu_model.GPUS.items()})
    lines = gpu_model.sensitivity(cases)
    after = ({k: c.value for k, c in gpu_model.C.items()},
             {k: g.l2_bw.value for k, g in gpu_model.GPUS.items()})
    assert before == after
    assert len(lines) == 2 + 2 * (len(gpu_model.SENSITIVITY) + 1)
    # a slower stream can only take the design further from the floor (the third value:
    # the forward's % of the roofline, x larger than L2/2)
    as_given = float(lines[1].split(";")[2].split()[0])
    halved = float(next(x for x in lines if "stream_eff x0.5" in x).split(";")[2].split()[0])
    assert halved < as_given
