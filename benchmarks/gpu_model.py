#!/usr/bin/env python
"""A performance model of the CUDA kernels on H100 SXM and H200 (no GPU needed).

    python benchmarks/gpu_model.py            # the table, the v2 verdict and the target checks
    python benchmarks/gpu_model.py --json     # one JSON row per (case, gpu, pass)
    python benchmarks/gpu_model.py --filter 's4 256x'   # only cases whose label matches

For every GPU case of bench_se.py (its --full plan: batch 1 and the training batch, fp32
NCHW and bf16/fp16 channels_last, the residual epilogue) and the forward and backward,
it predicts the time of

* fused: the v3 design (a kernel that zeroes the counters and two launches per pass,
  chained by programmatic dependent launch; no block waits on another; dependencies
  through the kernel boundary or a last-arrival handoff),
* compile: the kernels torch.compile (Inductor) makes of se_fused.reference,
* eager: the reference in eager mode (forward only),
* v2: the old persistent ticket/wave schedule, coarsely (waves x excitation chain),
* floor: 2|x| forward, 3|x| backward (one more |x| with a residual) at the copy rate,

from the bytes each kernel moves through HBM and L2, the FMAs, launches and the exposed
dependency chains, and the host's cost of issuing the calls (CUDA events time the
stream, so a call that the host issues more slowly than the GPU runs it is host-bound).

It is a model: every constant below is named, with where it comes from, and those
marked `calibrate` are estimates that the first GPU run measures (scripts/gpu_check.sh
--triage prints the model's predictions next to measured times). Nothing here is a
measurement.
"""
import argparse
import dataclasses
import functools
import json
import math
import re
import sys
from pathlib import Path
from typing import Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_se  # noqa: E402  (its GPU plan is the case list: one list, not a copy)

US = 1e-6
MB = 1e6
MiB = 1 << 20
TRAIN_BATCH = 256  # bench_se.default_train_batch on a GPU with >= 40 GiB (H100, H200)
PASSES = ("forward", "backward")


# --- constants


@dataclasses.dataclass(frozen=True)
class Const:
    value: float
    unit: str
    source: str
    calibrate: bool  # an estimate the first GPU run must measure


@dataclasses.dataclass(frozen=True)
class GPU:
    name: str
    sms: Const
    hbm: Const  # peak bytes/s
    l2: Const  # bytes
    clock: Const  # Hz under load
    copy_fraction: Const  # device-to-device copy rate / peak
    l2_bw: Const  # bytes/s read through L2 into the SMs

    @property
    def copy_bw(self) -> float:
        return self.hbm.value * self.copy_fraction.value

    @property
    def fma_rate(self) -> float:
        """fp32 FMAs per second over the whole chip."""
        return self.sms.value * C["fma_per_clk_sm"].value * self.clock.value


C: Dict[str, Const] = {
    "fma_per_clk_sm": Const(128, "FMA/clk/SM", "Hopper whitepaper: 128 FP32 lanes per SM", False),
    "fp32_flops": Const(67e12, "FLOP/s", "H100 SXM / H200 datasheets: 67 TFLOP/s FP32 (no TF32: "
                        "torch's default for matmul)", False),
    "stream_eff": Const(0.95, "x copy rate", "estimate: a 128-bit streaming kernel (ours or "
                        "Inductor's) relative to x.clone(); the triage's clone column measures it",
                        True),
    "fma_eff": Const(0.5, "x FMA peak", "estimate: FFMA issue beside loads, dot products of "
                     "R terms", True),
    "l2_keep": Const(0.75, "x L2 size", "estimate: the part of L2 that still holds x when the "
                     "second kernel re-reads it (evict_last x; the rest: y write-back, workspace, "
                     "weights, the two L2 partitions)", True),
    "t_l2": Const(0.30, "us", "review section 2, base: one L2 round trip with its loads in "
                  "flight (optimistic 0.2, pessimistic 0.4)", True),
    "t_handoff": Const(0.8, "us", "review section 2, base: release fence + atomic + acquire of a "
                       "last-arrival handoff (0.5-1.2)", True),
    "block_inflight": Const(16 * 1024, "bytes", "cuda-v3 plan.h: 16 KB tiles, 256 threads x 4 "
                            "loads of 16 B in flight per block", False),
    "loads_ahead": Const(8, "loads", "squeeze.cuh kLoadsAhead: the small layers' loops "
                         "(row_total, sum_of_groups, warp_dots, column_dot, grad_tile, the "
                         "staging of h / da1) load a chunk of 8 values per thread before "
                         "using the first (16 spills under the 64/80-register caps, ptxas); "
                         "whether they all overlap, the first run decides", True),
    "t_hbm": Const(0.8, "us", "review section 2, base: HBM load latency (0.6-1.0)", True),
    "blocks_per_sm_1": Const(4, "blocks", "cuda-v3 se_cuda_common.cuh: launch 1 compiled for "
                             "4 resident blocks of 256 threads (64 registers)", False),
    "blocks_per_sm_2": Const(3, "blocks", "cuda-v3 se_cuda_common.cuh: launch 2 compiled for "
                             "3 resident blocks (80 registers)", False),
    "t_ramp": Const(1.5, "us", "estimate: a full-grid kernel's start (first loads from HBM, "
                    "~0.8 us latency) and its last wave's drain", True),
    "t_gap": Const(1.0, "us", "estimate: device-side gap between two dependent kernels in one "
                   "stream (no programmatic dependent launch: SE_FUSED_CUDA_PDL=0)", True),
    "t_memset": Const(1.0, "us", "estimate: device time of the kernel that zeroes a few KB of "
                      "counters (or of cudaMemsetAsync), start to end", True),
    "t_small_kernel": Const(2.0, "us", "estimate: a tiny Triton/ATen kernel (N x C or N x R "
                            "elements), start to end", True),
    "t_gemm_min": Const(4.0, "us", "review section 2: cuBLAS 'about 5-8 us each for these sizes', "
                        "launch included; 4 us of device time assumed", True),
    "gemm_eff": Const(0.5, "x FP32 peak", "estimate: cuBLAS fp32 SIMT GEMM at M=256, K,N <= 2048",
                      True),
    "host_launch": Const(2.0, "us", "estimate: host cost of one cudaLaunchKernel or "
                         "cudaMemsetAsync from C++ (NVIDIA, 'Getting Started with CUDA Graphs': "
                         "launch overheads of a few us)", True),
    "host_fused_call": Const(6.0, "us", "estimate: squeeze_excite's Python checks, the "
                             "dispatcher, the op's checks and output allocations (launches "
                             "counted apart)", True),
    "host_eager_op": Const(6.0, "us", "estimate: one ATen op from Python that allocates and "
                           "launches (PyTorch operator micro-benchmarks: 2-3.5 us for view ops)",
                           True),
    "host_cheap_call": Const(1.0, "us", "estimate: a Python-level call that launches nothing "
                             "(no-op .to, a view, autocast enter/exit)", True),
    "host_compiled_call": Const(10.0, "us", "estimate: torch.compile's guards and generated "
                                "wrapper around the kernels (launches counted apart)", True),
    "host_triton_launch": Const(3.0, "us", "estimate: Inductor's launcher per Triton kernel", True),
    "host_autograd": Const(10.0, "us", "estimate: autograd.grad's engine, graph walk and grad "
                           "accumulation, for any backend's backward", True),
    "host_bwd_wrapper": Const(6.0, "us", "estimate: se_fused's Python backward (autograd "
                              "registration, per-input grads) around se_backward", True),
    "v2_chunk": Const(2.75, "us", "review F2: 2.5-3 us per 32-channel K-chunk of the v2 "
                      "excitation tiles", False),
    "v2_cl_z": Const(3.9, "us", "review F3: 13 dependent L2 round trips per z of a channels_last "
                     "chunk when H*W is split in many partials", False),
}

# Vendor specs; the H200's L2 as torch reported it on the lent H200 (KINDS.md).
GPUS = {
    "H100": GPU(
        "H100",
        Const(132, "SMs", "H100 SXM5 datasheet / Hopper whitepaper", False),
        Const(3.35e12, "B/s", "H100 SXM5 datasheet: 3.35 TB/s HBM3", False),
        Const(50 * MiB, "B", "Hopper whitepaper: 50 MB L2 (torch reports 50 MiB)", False),
        Const(1.98e9, "Hz", "H100 SXM5 boost clock 1980 MHz (also read on the H200, KINDS.md)",
              False),
        Const(0.90, "x peak", "assumed equal to the H200's measured fraction (4.3/4.8); the "
              "review used 3.0 TB/s", True),
        Const(6.2e12, "B/s", "Chips and Cheese, 'Nvidia's H100: Funny L2' (2023): ~5.5 TB/s on "
              "the H100 PCIe at 1755 MHz, scaled to 1980 MHz; estimate", True),
    ),
    "H200": GPU(
        "H200",
        Const(132, "SMs", "H200 SXM datasheet; KINDS.md: torch reports 132", False),
        Const(4.8e12, "B/s", "H200 SXM datasheet: 4.8 TB/s HBM3e", False),
        Const(60 * MiB, "B", "KINDS.md: torch reported 60 MB of L2 on the lent H200", False),
        Const(1.98e9, "Hz", "KINDS.md: SM clock 1980 MHz read under load", False),
        Const(0.896, "x peak", "KINDS.md: device-to-device copy 4.3 TB/s (read + write) measured "
              "on the lent H200", False),
        Const(6.2e12, "B/s", "as the H100 (same chip and clock); estimate", True),
    ),
}


def const(name: str) -> float:
    return C[name].value


# --- building blocks


def stream_us(g: GPU, hbm: float, l2_reads: float, fma: float = 0.0) -> float:
    """A bandwidth-bound phase: the slowest of HBM (reads and writes), reads through L2
    (hits and misses alike reach the SMs through it) and FMA issue."""
    return max(hbm / (g.copy_bw * const("stream_eff")), l2_reads / g.l2_bw.value,
               fma / (g.fma_rate * const("fma_eff"))) / US


def on_grid_us(g: GPU, stream: float, blocks: int, block_bytes: float, per_sm: float,
               prologue: float = 0.0) -> float:
    """A stream phase of `stream` us (at full bandwidth) run by `blocks` blocks of
    `block_bytes` each, per_sm resident per SM, each spending `prologue` us before its
    first load. No faster than the bandwidth allows after the first prologue, nor than
    the blocks' waves one after the other, each block at most block_inflight bytes per
    HBM latency; beyond one wave the last blocks also finish alone (half a block)."""
    slots = int(g.sms.value * per_sm)
    solo = block_bytes / const("block_inflight") * const("t_hbm")
    waves = math.ceil(blocks / slots)
    t = max(prologue + stream, waves * (prologue + solo))
    if blocks > slots:
        t += 0.5 * solo
    return t


def ahead_steps(loads: int, chunk: float = 0) -> int:
    """squeeze.cuh ahead_steps: iterations per chunk of `chunk` loads (0: loads_ahead) of a
    loop that loads `loads` values an iteration."""
    return max(1, math.ceil((chunk or const("loads_ahead")) / loads))


def loop_us(calls: float, trips: float, loads: int = 1, across: bool = False,
            chunk: float = 0) -> float:
    """`calls` loops one after the other in a thread, each of `trips` iterations of
    `loads` independent L2 loads (the small layers' sums, dot products and
    weight-gradient tiles): latency-bound, one L2 round trip per chunk of ahead_steps
    iterations, whose loads are all issued before the first is used (ahead_loop). across:
    the chunks run on across the calls (no partial chunk at the end of each call), as
    warp_dots does, and the variant `ahead` for every loop."""
    steps = ahead_steps(loads, chunk)
    trips_per = calls * trips / steps if across else calls * math.ceil(trips / steps)
    return const("t_l2") * trips_per


def l2_hits(reread: float, working_set: float, keep: float, reverse: bool) -> float:
    """Bytes of a re-read found in L2. All of it when the first kernel's working set fits;
    otherwise the tail the first kernel left, found first only when walked in reverse."""
    if working_set <= keep:
        return reread
    return reread * keep / working_set if reverse else 0.0


def gemm_us(m: int, n: int, k: int) -> float:
    """A cuBLAS fp32 GEMM (m x k) @ (k x n): its floor time, or its FLOPs at gemm_eff."""
    flops = 2.0 * m * n * k
    return max(const("t_gemm_min"), flops / (const("fp32_flops") * const("gemm_eff")) / US)


@dataclasses.dataclass
class Prediction:
    device_us: float
    host_us: float
    hbm_bytes: float
    launches: int
    parts: Dict[str, float]

    @property
    def us(self) -> float:
        """What CUDA events around the call measure: the stream waits for the host."""
        return max(self.device_us, self.host_us)


# --- the v3 design

# Tiles (sample tile NT x channel tile CT x hw part): the default rows use the plan of the
# cuda-v3 branch (plan_tiles); "fused_best_us" uses, for each kernel, the tile from these
# candidates that the model's own cost function predicts fastest, to show what the tile
# rule costs. The rows carry the tiles ("k1_tile", "k2_tile").
NT_CHOICES = (1, 2, 4, 8)  # the plan keeps one accumulator per sample in registers: <= 8
CT_CHOICES = (8, 16, 32, 64, 128, 256)
# plan.h kGroupChannelsForward / kGroupChannelsBackward
GROUP_CHANNELS = {"forward": 64, "backward": 32}
MIN_PART_BYTES = 4096  # no hw part smaller than this (one 16-byte load per thread)
GRAD_TILE = 32  # weight-gradient output tiles (plan.h kGradTile)
SUM_PAIRS = 4  # small_layers.cuh kSumPairs: outputs a thread sums over the groups at once
GRAD_SAMPLES, GRAD_SPLITS, GRAD_BLOCKS = 32, 8, 512  # plan.h kGradSamples, ...Splits, ...Blocks


def grad_splits(N: int, tiles: int) -> int:
    """plan.h grad_splits: blocks per weight-gradient tile, each over ceil(N / splits)
    samples."""
    return max(1, min(GRAD_SPLITS, math.ceil(N / GRAD_SAMPLES), GRAD_BLOCKS // max(1, tiles)))


@dataclasses.dataclass(frozen=True)
class Tile:
    """A launch's tiling. K1: NT samples x CT channels per finalizer group, parts partials
    per (n, c), ct_count groups. K2: NT samples x CT channels x one of `parts` hw parts per
    block, ct_count channel tiles."""
    NT: int
    CT: int
    parts: int
    blocks: int
    ct_count: int


def tile_candidates(N: int, Cc: int, HW: int, esize: int):
    for NT in NT_CHOICES:
        if NT > N and NT != 1:
            continue
        for CT in CT_CHOICES:
            if CT > Cc and CT != CT_CHOICES[0]:
                continue
            CTe = min(CT, Cc)
            slab = NT * CTe * HW * esize
            p = 1
            while True:
                ct_count = math.ceil(Cc / CTe)
                yield Tile(NT, CTe, p, math.ceil(N / NT) * ct_count * p, ct_count)
                p *= 2
                if p > HW or slab / p < MIN_PART_BYTES:
                    break


@dataclasses.dataclass(frozen=True)
class Shape:
    """What the kernels' cost depends on (bf16 and fp16 cases share it)."""
    N: int
    C: int
    R: int
    HW: int
    esize: int
    residual: bool
    pass_: str
    layout: str = "nchw"

    @property
    def X(self) -> float:
        return float(self.N * self.C * self.HW * self.esize)


def k1_cost(s: Shape, g: GPU, t: Tile, ahead: bool = False
            ) -> Tuple[float, float, Dict[str, float]]:
    """K1 (squeeze, or the backward's reduce): (us, HBM bytes, parts). Streams x (g and v,
    and the mask y with a residual), writes per-(n, c, part) partials; the last arrival per
    (sample tile, channel tile) sums them and does its fc1 (dh) partial, reading its
    W1 (W2) slice once per sample tile; the last per sample tile sums the channel tiles'
    partials: that chain is exposed after the stream."""
    X, N, Cc, R = s.X, s.N, s.C, s.R
    reads = X if s.pass_ == "forward" else X * (2 + s.residual)
    ws = 4.0 * N * Cc * t.parts
    w_slices = math.ceil(N / t.NT) * Cc * R * 4.0 + (0 if s.pass_ == "forward" else 4.0 * N * Cc)
    fma = float(N) * Cc * R
    stream = on_grid_us(g, stream_us(g, reads + ws, reads + ws + w_slices, fma), t.blocks,
                        (reads + ws) / t.blocks, const("blocks_per_sm_1"))
    # the group's sums: each thread adds `parts` partials for each of its (n, c) pairs
    # (row_total; the backward also loads a2); then its share of the next layer: forward
    # a warp per r, lanes over the group's channels (warp_dots, W1 row slices); backward a
    # thread per r over the channels (column_dot, W2 columns, half chunks: registers);
    # then the sample tile's sum over the groups (sums_of_groups: a thread's SUM_PAIRS
    # outputs at once, each chunk the loads of loads_ahead groups of all of them).
    # Shared-memory operands are not L2 round trips.
    sums = loop_us(math.ceil(t.NT * t.CT / 256), t.parts + (s.pass_ != "forward"), 1, ahead)
    share = (loop_us(math.ceil(R / 8), math.ceil(t.CT / 32), 1, True) if s.pass_ == "forward"
             else loop_us(math.ceil(R / 256), t.CT, 1, ahead, const("loads_ahead") / 2))
    groups = loop_us(math.ceil(t.NT * R / (256 * SUM_PAIRS)), t.ct_count, SUM_PAIRS, ahead,
                     SUM_PAIRS * const("loads_ahead"))
    chain = 2 * const("t_handoff") + sums + share + groups
    return (const("t_ramp") + stream + chain, reads + ws,
            {"K1 stream": stream, "K1 chain": chain})


def k2_cost(s: Shape, g: GPU, t: Tile, keep: float, ahead: bool = False
            ) -> Tuple[float, float, Dict[str, float]]:
    """K2 (scale, or the backward's map): (us, HBM bytes, parts). Each block computes the
    gate input (fc2 row, or dz) of its own (n, c) pairs, R FMAs each, from the sample tile's
    h (da1) and the channel tile's W2 rows (W1 columns) read from L2; then streams. The
    re-read of x (g, and the mask) hits L2 per l2_hits, walked in reverse. The backward's
    weight-gradient blocks (32 x 32 tiles over the batch) run beside the map blocks."""
    X, N, Cc, R = s.X, s.N, s.C, s.R
    res = X if s.residual else 0.0
    if s.pass_ == "forward":
        first, reread, writes, other = X, X, X, res
        wg_fma = wg_l2 = wg_block = wg_all = 0.0
    else:
        first, reread, writes, other = X * (2 + s.residual), X * (1 + s.residual), \
            X * (1 + s.residual), 0.0
        wg_fma = 2.0 * N * Cc * R
        wg_tiles = 2 * math.ceil(Cc / GRAD_TILE) * math.ceil(R / GRAD_TILE)
        splits = grad_splits(N, wg_tiles)
        # operands, and with splits each block's partial tile written and read back
        wg_l2 = wg_tiles * (N * 2 * GRAD_TILE * 4.0
                            + (splits > 1) * 2 * splits * (GRAD_TILE + 1) * GRAD_TILE * 4.0)
        # grad_tile: n ascending over the block's samples, per n a value of the column
        # operand and 4 of the rows, in chunks and a half; with splits the last arrival
        # adds the partials in split order, a chunk of splits per output (4 and 4 biases)
        per_block = loop_us(1, math.ceil(N / splits), 1 + GRAD_TILE // 8, ahead,
                            1.5 * const("loads_ahead"))
        final = const("t_handoff") + loop_us(2 * GRAD_TILE // 8, splits) if splits > 1 else 0.0
        wg_block = per_block + final  # one tile's chain
        # the weight-gradient blocks' latency-bound time over all launch-2 slots
        wg_all = (wg_tiles * splits * per_block + wg_tiles * final) / launch2_slots(g)
    hits = l2_hits(reread, first, keep, reverse=True)
    s_l2 = t.blocks * 4.0 * (t.NT * R + t.CT * R + t.NT * t.CT)
    s_fma = float(t.blocks) * t.NT * t.CT * R
    s_latency = prologue_us(s, t, ahead)
    hbm = (reread - hits) + other + writes
    stream = on_grid_us(g, stream_us(g, hbm, reread + other + s_l2 + wg_l2, s_fma + wg_fma),
                        t.blocks, (reread + other + writes) / t.blocks,
                        const("blocks_per_sm_2"), s_latency)
    us = const("t_ramp") + max(stream, wg_block, wg_all)
    return us, hbm, {"K2 stream": stream, "K2 gate-input latency": s_latency,
                     "K2 weight-grad block": wg_block, "K2 weight-grad blocks": wg_all,
                     "K2 L2 hits (MB)": hits / MB}


SMEM_BYTES = 24 * 1024  # plan.h kSmemBytes: a launch-2 block's shared memory


def prologue_us(s: Shape, t: Tile, ahead: bool = False) -> float:
    """A launch-2 block's gate inputs before it streams: its NT rows of h (forward) or
    da1 (backward) staged in shared memory behind its NT x CT constants (s, and dz) when
    they fit (stage_rows, 256 threads), else read from L2 in the loop, a round trip per
    use; then forward_gates: a warp per channel, lanes over R (warp_dots, W2 rows);
    backward_consts: a thread per channel over R (column_dot, W1 columns)."""
    R, acc = s.R, (8 if s.esize == 8 else 4)
    consts = t.NT * t.CT * acc * (1 if s.pass_ == "forward" else 2)
    staged = t.NT * R * acc <= SMEM_BYTES - consts
    if s.pass_ == "forward":  # warp_dots: one stream of loads over the warp's channels
        calls, trips, across = math.ceil(t.CT / 8), math.ceil(R / 32), True
    else:
        calls, trips, across = math.ceil(t.CT / 256), R, ahead
    if not staged:
        return const("t_l2") * calls * trips
    return loop_us(1, math.ceil(t.NT * R / 256), 1, ahead) + loop_us(calls, trips, 1, across)


def _shape(case, pass_: str) -> Shape:
    return Shape(case.N, case.shape.C, case.shape.R, case.shape.H * case.shape.W,
                 case.dtype.itemsize, case.residual, pass_, case.layout)


def samples_per_block(N: int, per_sample: int, most: int, slots: int, prologue: float) -> int:
    """plan.h samples_per_block: of 1 .. most, the fewest (block waves) x (samples +
    prologue in tiles); the larger on a tie."""
    if slots <= 0:
        return min(most, N)
    best, best_cost = 1, None
    for m in range(1, min(most, N) + 1):
        waves = math.ceil(math.ceil(N / m) * per_sample / slots)
        cost = waves * (m + prologue)
        if best_cost is None or cost <= best_cost:
            best, best_cost = m, cost
    return best


def plan_tiles(s: Shape, slots: int = 0, samples2: int = 0) -> Tuple[Tile, Tile]:
    """The tiles of the v3 plan (csrc/cuda/plan.h, make_plan): launch 1 streams per-sample
    tiles (NCHW: a channel tile's span cut in parts of L elements, 16 KB; channels_last: TC
    granule columns x 16*TP pixels); its finalizers take sample tiles of NT <= 8 samples
    (4 for float64) x channel groups of >= 64 channels; launch 2 takes M2 samples of one
    (channel tile, part), M2 from samples_per_block with `slots` launch-2 blocks resident
    (SE_FUSED_CUDA_SAMPLES: samples2), except in the channels_last forward (plan.h t2):
    channel tiles of max(2, 8 / V) granules (a channel per warp in forward_gates, whole
    32-byte sectors; at most the channels need), the samples stacked as rows of one tile of
    16 * TP2 pixel rows (M2 = as many whole samples as fit, <= 8; a larger sample is cut
    in parts of 16 * TP2 / M2 pixels). Launch 1's finalizer groups are whole channel tiles
    of >= GROUP_CHANNELS[pass] channels, and its channels_last tiles at most that wide (at
    least a granule); launch 2 of the channels_last backward keeps the widest tiles (up to
    32 granules). Returned as (K1 tile with CT = the finalizer's channel group, K2 tile)."""
    esize, acc = s.esize, (8 if s.esize == 8 else 4)
    V = 16 // esize
    stage = 16 * 1024
    group = GROUP_CHANNELS[s.pass_]
    wide = min(32, 1 << max(0, math.ceil(math.log2(math.ceil(s.C / V)))))
    L = PT = 0
    if s.layout == "nchw":
        L = stage // acc if s.pass_ == "backward" else stage // esize
        gran = 1
        while (gran * s.HW) % V:
            gran *= 2
        cap = 256 // gran * gran
        CTw = min(cap, max(gran, L // s.HW // gran * gran)) if s.HW < L else gran
        CTw = min(CTw, math.ceil(s.C / gran) * gran)
        CTn, Tp = math.ceil(s.C / CTw), math.ceil(CTw * s.HW / L)
        partials = 1  # per-(n, c) row sums (plus edge pieces, counted in the workspace)
        tile_elems, tile_ch = min(L, CTw * s.HW), min(CTw, math.ceil(L / s.HW) + 1)
    else:
        TC = min(wide, max(1, group // V))
        CTw, PT = TC * V, 16 * (256 // TC)
        CTn, Tp = math.ceil(s.C / CTw), math.ceil(s.HW / PT)
        partials = Tp
    ms = 4 if acc == 8 else 8
    NT = min(ms, s.N)
    per_group = math.ceil(group / CTw)
    CG, CGn = per_group * CTw, math.ceil(CTn / per_group)
    k1 = Tile(NT, min(CG, s.C), partials, s.N * CTn * Tp, CGn)
    if s.layout != "nchw" and s.pass_ == "backward":
        CTw, PT = wide * V, 16 * (256 // wide)
        CTn, Tp = math.ceil(s.C / CTw), math.ceil(s.HW / PT)
    if s.layout != "nchw":
        tile_elems, tile_ch = CTw * min(PT, s.HW), min(CTw, s.C)
    if s.layout != "nchw" and s.pass_ == "forward":
        TC2 = min(wide, max(2, 8 // V))
        CTw, rows = TC2 * V, 16 * (256 // TC2)
        M2 = min(ms, s.N, samples2 if samples2 > 0 else max(1, rows // s.HW))
        CTn, Tp = math.ceil(s.C / CTw), math.ceil(s.HW / (rows // M2))
    else:
        prologue = ((0.5 if s.layout != "nchw" else 1.0) * tile_ch * s.R * acc
                    / max(1, 2 * tile_elems * esize))
        M2 = (min(samples2, ms, s.N) if samples2 > 0
              else samples_per_block(s.N, CTn * Tp, ms, slots, prologue))
    k2 = Tile(M2, min(CTw, s.C), Tp, math.ceil(s.N / M2) * CTn * Tp, CTn)
    return k1, k2


def launch2_slots(g: GPU) -> int:
    """se_cuda_ops.cpp launch2_slots: SMs x the blocks per SM launch 2 is compiled for."""
    return int(g.sms.value * const("blocks_per_sm_2"))


def best_tiles(s: Shape, gname: str, ahead: bool = False) -> Tuple[Tile, Tile]:
    """The candidates the model predicts fastest for each launch (with the constants as
    they are now: cached per set of constants)."""
    return _best_tiles(s, gname, ahead, tuple(c.value for c in C.values()),
                       tuple(GPUS[gname].l2_bw.value for _ in (0,)))


@functools.lru_cache(maxsize=None)
def _best_tiles(s: Shape, gname: str, ahead: bool, _consts, _l2_bw) -> Tuple[Tile, Tile]:
    g = GPUS[gname]
    keep = const("l2_keep") * g.l2.value
    cands = list(tile_candidates(s.N, s.C, s.HW, s.esize))
    k1 = min(cands, key=lambda t: k1_cost(s, g, t, ahead)[0])
    k2 = min(cands, key=lambda t: k2_cost(s, g, t, keep, ahead)[0])
    return k1, k2


def fused(case, g: GPU, pass_: str, pdl: bool = True, best: bool = False,
          samples2: int = 0, ahead: bool = False) -> Prediction:
    """The v3 design: a kernel that zeroes the counters, K1, K2, with the plan's tiles; K1
    and K2 by programmatic dependent launch (kernel_launch.cuh): K1 starts once the zeroing
    kernel has started and waits for it only before its first counter atomic, after its
    tile (the zeroing kernel is hidden under K1's streaming), and K2's launch and ramp
    overlap K1's tail. Variants: pdl=False, plain launches (SE_FUSED_CUDA_PDL=0, or a GPU
    before sm_90): the zeroing kernel and K1, K2 one after the other with a gap each;
    best, the tiles the model itself predicts fastest; ahead, the small layers' chunks of
    loads run on across a thread's successive loops; samples2, launch 2's samples per block as
    SE_FUSED_CUDA_SAMPLES sets it (0: the plan's)."""
    s = _shape(case, pass_)
    t1, t2 = (best_tiles(s, g.name, ahead) if best
              else plan_tiles(s, launch2_slots(g), samples2))
    keep = const("l2_keep") * g.l2.value
    k1, hbm1, p1 = k1_cost(s, g, t1, ahead)
    k2, hbm2, p2 = k2_cost(s, g, t2, keep, ahead)
    launches = 3  # the zeroing kernel, K1, K2: three launches from the host either way
    if pdl:
        device = k1 + k2 - const("t_ramp")
    else:
        device = const("t_memset") + const("t_gap") + k1 + const("t_gap") + k2
    host = const("host_fused_call") + launches * const("host_launch")
    if pass_ == "backward":
        host += const("host_autograd") + const("host_bwd_wrapper")
    return Prediction(device, host, hbm1 + hbm2, launches, {**p1, **p2})


# --- torch.compile of the reference


def compiled(case, g: GPU, pass_: str) -> Prediction:
    """Inductor's kernels for se_fused.reference: forward = one reduction (two for a
    channels_last split reduction), fc1 (cuBLAS addmm), act (Triton), fc2 (addmm), one
    pointwise (gate, x*s, residual, relu); backward = one reduction (sum g*x), the gate
    derivative, 4 GEMMs (dh, gw2, gw1, dz), bias sums, act derivative, one pointwise.
    The pointwise re-read of x (g) hits L2 only where the reduction's inputs fit: it walks
    in the same order, so the tail left in L2 is found last, after it was evicted."""
    X = float(case.x_bytes)
    N, Cc, R = case.N, case.shape.C, case.shape.R
    keep = const("l2_keep") * g.l2.value
    res = 1 if case.residual else 0
    split = 1 if case.layout == "channels_last" and case.shape.H * case.shape.W > 1 else 0
    small = const("t_small_kernel")
    if pass_ == "forward":
        red_read, reread, writes, other = X, X, X, X * res
        gemms = [gemm_us(N, R, Cc), gemm_us(N, Cc, R)]
        n_small = 1 + split  # act (+ the split reduction's second stage)
    else:
        red_read, reread, writes, other = X * (2 + res), X * (1 + res), X * (1 + res), 0.0
        gemms = [gemm_us(N, R, Cc), gemm_us(Cc, R, N), gemm_us(R, Cc, N),
                 gemm_us(N, Cc, R)]
        n_small = 3 + split  # gate derivative (+ gb2), act derivative (+ gb1), dz scale
    hits = l2_hits(reread, red_read, keep, reverse=False)
    red = const("t_ramp") + stream_us(g, red_read, red_read)
    pw_hbm = reread - hits + other + writes
    pw = const("t_ramp") + stream_us(g, pw_hbm, reread + other)
    kernels = 2 + n_small + len(gemms)
    device = red + pw + sum(gemms) + n_small * small + (kernels - 1) * const("t_gap")
    triton = 2 + n_small
    host = (const("host_compiled_call") + triton * const("host_triton_launch")
            + len(gemms) * const("host_eager_op"))
    if pass_ == "backward":
        host += const("host_autograd")
    parts = {"reduction": red, "gemms": sum(gemms), "small kernels": n_small * small,
             "pointwise": pw, "L2 hits of the re-read (MB)": hits / MB}
    return Prediction(device, host, red_read + pw_hbm, kernels, parts)


# --- eager (forward only: the batch-1 target reads it)


def eager_forward(case, g: GPU) -> Prediction:
    """se_fused.reference in eager mode. fp32: mean, addmm, act, addmm, gate, mul (six
    kernels); bf16/fp16 add x.to(float32) twice and the cast back (each a full pass);
    a residual adds its cast, the add and the relu."""
    X = float(case.x_bytes)
    e = case.dtype.itemsize
    f = 4.0 / e  # bytes of the float32 copy per byte of x
    N, Cc, R = case.N, case.shape.C, case.shape.R
    half = e < 4
    passes = []  # (hbm bytes) per full-size kernel
    if half:
        passes += [X + f * X]  # x.to(float32)
    passes += [(f if half else 1) * X]  # mean
    if half:
        passes += [X + f * X]  # x.to(float32) again for the product
    passes += [2 * (f if half else 1) * X]  # mul
    if case.residual:
        if half:
            passes += [X + f * X]
        passes += [3 * (f if half else 1) * X, 2 * (f if half else 1) * X]  # add, relu
    if half:
        passes += [f * X + X]  # .to(x.dtype)
    small = 3  # act, gate and the bias-free parts are tiny kernels
    gemms = [gemm_us(N, R, Cc), gemm_us(N, Cc, R)]
    device = (sum(const("t_ramp") + stream_us(g, b, b / 2) for b in passes) + sum(gemms)
              + small * const("t_small_kernel")
              + (len(passes) + small + len(gemms) - 1) * const("t_gap"))
    ops = len(passes) + small + len(gemms) - 1  # act and gate are 2 of the 3 small ones
    host = ops * const("host_eager_op") + 10 * const("host_cheap_call")
    return Prediction(device, host, sum(passes), ops, {})


# --- the old v2 persistent schedule, coarsely (review F1-F3)


def v2(case, g: GPU, pass_: str) -> float:
    """Waves of L2/4 bytes; one excitation chain per wave, and the chains do not overlap
    (review F1): time ~ W x max(chain, one wave's streaming) + one wave's streaming. The
    chain: fc1 over K <= 256 and fc2 over R <= 128 in 32-channel chunks at 2.75 us each
    (F2), plus channels_last z from many partials (F3) and three handoffs; the backward's
    (gate, dh, dz) taken as twice the forward's. The waves' re-reads are assumed to hit L2,
    so it streams only the floor's bytes, at the copy rate."""
    X = float(case.x_bytes)
    W = max(1, math.ceil(X / (g.l2.value / 4)))
    chunks = math.ceil(min(case.shape.C, 256) / 32) + math.ceil(min(case.shape.R, 128) / 32)
    chain = chunks * const("v2_chunk") + 3 * const("t_handoff")
    if case.layout == "channels_last" and case.shape.H * case.shape.W * case.dtype.itemsize > 1024:
        chain += math.ceil(min(case.shape.C, 256) / 32) * const("v2_cl_z")
    if pass_ == "backward":
        chain *= 2
    wave = case.floor_bytes(pass_) / W / g.copy_bw / US
    device = W * max(chain, wave) + wave + const("t_ramp") + const("t_memset") + const("t_gap")
    host = const("host_fused_call") + 2 * const("host_launch")
    if pass_ == "backward":
        host += const("host_autograd") + const("host_bwd_wrapper")
    return max(device, host)


# --- rows


def gpu_cases(train_batch: int = TRAIN_BATCH):
    """Every GPU case of bench_se.py --full (its own plan, so the list cannot drift)."""
    return bench_se.plan("cuda", quick=False, train_batch=train_batch, policy="none")


def floor_us(case, g: GPU, pass_: str) -> float:
    return case.floor_bytes(pass_) / g.copy_bw / US


def rows(cases=None, gpus=("H100", "H200"), variants: bool = True) -> List[dict]:
    """One dict per (case, gpu, pass); variants=False leaves out the plain-launch, best-tile
    and loads-ahead variants (their columns then repeat the default)."""
    out = []
    for case in cases if cases is not None else gpu_cases():
        for gname in gpus:
            g = GPUS[gname]
            for pass_ in PASSES:
                f, c = fused(case, g, pass_), compiled(case, g, pass_)
                fp = fb = fa = fall = f
                if variants:
                    fp = fused(case, g, pass_, pdl=False)
                    fb = fused(case, g, pass_, best=True)
                    fa = fused(case, g, pass_, ahead=True)
                    fall = fused(case, g, pass_, best=True, ahead=True)
                fl = floor_us(case, g, pass_)
                e = eager_forward(case, g) if pass_ == "forward" else None
                t1, t2 = plan_tiles(_shape(case, pass_), launch2_slots(g))
                half_l2 = case.x_bytes <= g.l2.value / 2
                out.append({
                    "case": case.label, "gpu": gname, "pass": pass_,
                    "N": case.N, "C": case.shape.C, "R": case.shape.R, "H": case.shape.H,
                    "W": case.shape.W, "dtype": bench_se.DTYPE_NAMES[case.dtype],
                    "layout": case.layout, "residual": case.residual,
                    "fused_us": f.us, "compile_us": c.us, "floor_us": fl,
                    "eager_us": e.us if e else None, "v2_us": v2(case, g, pass_),
                    "fused_plain_us": fp.us, "fused_best_us": fb.us, "fused_ahead_us": fa.us,
                    "fused_all_us": fall.us,
                    "fused_device_us": f.device_us, "fused_host_us": f.host_us,
                    "compile_device_us": c.device_us, "compile_host_us": c.host_us,
                    "host_bound": f.host_us >= f.device_us,
                    "bytes": case.floor_bytes(pass_), "x_bytes": case.x_bytes,
                    "fused_hbm_bytes": f.hbm_bytes, "compile_hbm_bytes": c.hbm_bytes,
                    "fused_launches": f.launches, "compile_launches": c.launches,
                    "pct_of_floor": 100.0 * fl / f.us,
                    "speedup_compile": c.us / f.us,
                    "speedup_eager": (e.us / f.us) if e else None,
                    "fits_half_l2": half_l2,
                    "k1_tile": dataclasses.asdict(t1), "k2_tile": dataclasses.asdict(t2),
                    "fused_parts_us": {k: round(v, 3) for k, v in f.parts.items()},
                    "compile_parts_us": {k: round(v, 3) for k, v in c.parts.items()},
                })
    return out


# --- targets (issue 16, item 2) and the v2 verdict


def _geomean(v: List[float]) -> float:
    return math.exp(sum(math.log(x) for x in v) / len(v))


VARIANTS = {"fused_us": "v3 as planned (default)",
            "fused_plain_us": "plain launches (PDL off)",
            "fused_best_us": "the model's best tiles", "fused_ahead_us": "+ ahead across loops",
            "fused_all_us": "best tiles + ahead across loops"}


def check_targets(rs: List[dict], key: str = "fused_us") -> List[dict]:
    """Each target with its value, goal, whether the model meets it, and the rows that miss,
    for the fused time under `key` (a VARIANTS key)."""
    if key != "fused_us":
        rs = [_as_variant(r, key) for r in rs]
    out = []

    def add(what, value, goal, misses):
        out.append({"what": what, "value": value, "goal": goal, "met": not misses,
                    "misses": misses})

    worst = min(rs, key=lambda r: r["speedup_compile"])
    add("every case: fused / torch.compile speedup (worst)", worst["speedup_compile"], 1.0,
        [_miss(r, "speedup_compile") for r in rs if r["speedup_compile"] < 1.0])
    gm = _geomean([r["speedup_compile"] for r in rs])
    add(f"geomean speedup vs torch.compile ({len(rs)} rows)", gm, 1.3,
        [] if gm >= 1.3 else ["geomean"])
    fwd_train = [r for r in rs if r["pass"] == "forward" and r["N"] > 1]
    for what, sel, goal in (("|x| <= L2/2", True, 85.0), ("|x| > L2/2", False, 60.0)):
        sub = [r for r in fwd_train if r["fits_half_l2"] == sel]
        if sub:
            add(f"forward, {what} ({len(sub)} rows): % of the 2|x| roofline (worst)",
                min(r["pct_of_floor"] for r in sub), goal,
                [_miss(r, "pct_of_floor") for r in sub if r["pct_of_floor"] < goal])
    one = [r for r in rs if r["pass"] == "forward" and r["N"] == 1]
    if one:
        add(f"batch-1 forward ({len(one)} rows): speedup vs eager (worst)",
            min(r["speedup_eager"] for r in one), 3.0,
            [_miss(r, "speedup_eager") for r in one if r["speedup_eager"] < 3.0])
    return out


def _as_variant(r: dict, key: str) -> dict:
    t = r[key]
    return {**r, "fused_us": t, "pct_of_floor": 100.0 * r["floor_us"] / t,
            "speedup_compile": r["compile_us"] / t,
            "speedup_eager": r["eager_us"] / t if r["eager_us"] else None}


def _miss(r: dict, key: str) -> str:
    return f"{r['gpu']} {r['pass']} {r['case']}: {r[key]:.2f}"


def v2_verdict(rs: List[dict]) -> Tuple[bool, List[dict], str]:
    """Does the old persistent schedule win anywhere by >= 1.2x (issue item 3)? The rows
    where it does, and a sentence."""
    wins = sorted((r for r in rs if r["fused_us"] >= 1.2 * r["v2_us"]),
                  key=lambda r: r["v2_us"] / r["fused_us"])
    best = min(rs, key=lambda r: r["v2_us"] / r["fused_us"])
    text = (f"v2 (persistent ticket/wave, coarse model) vs the v3 default: v2's best row is "
            f"{best['gpu']} {best['pass']} {best['case']}: v3 {best['fused_us']:.1f} us, v2 "
            f"{best['v2_us']:.1f} us ({best['fused_us'] / best['v2_us']:.2f}x in v2's favour). ")
    if wins:
        text += (f"v2 wins by >= 1.2x on {len(wins)} of {len(rs)} rows (|x| many times L2 with a "
                 "short excitation: it streams 2|x| where v3 streams 3|x| less the L2 tail)")
    else:
        text += "v2 wins nowhere by >= 1.2x: it goes (issue item 3)"
    return bool(wins), wins, text


# --- sensitivity: how far the verdicts hang on the estimated constants

SENSITIVITY = ("stream_eff", "fma_eff", "l2_keep", "t_l2", "loads_ahead", "t_handoff", "t_ramp", "t_gap",
               "t_gemm_min", "host_fused_call", "host_eager_op", "host_compiled_call")


def sensitivity(cases, factors=(0.5, 2.0)) -> List[str]:
    """The default design's target values with one calibrate constant (and the L2
    bandwidth of both GPUs) scaled at a time; stream_eff and l2_keep capped at 1."""
    def summary(label):
        ts = check_targets(rows(cases, variants=False))
        return f"  {label:28s} " + "; ".join(
            f"{t['value']:.2f}{'' if t['met'] else ' MISSED'}" for t in ts)
    head = [t["what"].split(" (")[0] for t in check_targets(rows(cases, variants=False))]
    lines = ["Sensitivity of the default design's targets (values in the order: "
             + "; ".join(head) + "):", summary("as given")]
    saved_c, saved_g = dict(C), dict(GPUS)
    try:
        for name in SENSITIVITY:
            for f in factors:
                c = C[name]
                value = min(c.value * f, 1.0) if name in ("stream_eff", "l2_keep") else c.value * f
                C[name] = dataclasses.replace(c, value=value)
                lines.append(summary(f"{name} x{f:g} ({value:g})"))
                C[name] = c
        for f in factors:
            for k, g in saved_g.items():
                GPUS[k] = dataclasses.replace(g, l2_bw=dataclasses.replace(
                    g.l2_bw, value=g.l2_bw.value * f))
            lines.append(summary(f"l2_bw x{f:g}"))
            GPUS.update(saved_g)
    finally:
        C.clear()
        C.update(saved_c)
        GPUS.clear()
        GPUS.update(saved_g)
    return lines


# --- output


def constants_table() -> List[str]:
    lines = ["| constant | value | unit | source | calibrate |", "|---|---|---|---|---|"]
    for k, c in C.items():
        mark = "yes" if c.calibrate else ""
        lines.append(f"| {k} | {c.value:g} | {c.unit} | {c.source} | {mark} |")
    for g in GPUS.values():
        for f in dataclasses.fields(g):
            if f.name == "name":
                continue
            c = getattr(g, f.name)
            lines.append(f"| {g.name}.{f.name} | {c.value:g} | {c.unit} | {c.source} | "
                         f"{'yes' if c.calibrate else ''} |")
    return lines


def table(rs: List[dict], markdown: bool = False) -> List[str]:
    head = ("case", "gpu", "pass", "floor", "fused", "plain", "best", "compile", "eager", "v2",
            "%floor", "vs compile")
    lines = []
    if markdown:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    else:
        lines.append(f"{'case':64s} {'gpu':4s} {'pass':8s} "
                     + " ".join(f"{h:>8s}" for h in head[3:]))

    def num(v):
        return "-" if v is None else f"{v:.1f}"
    for r in rs:
        cells = [num(r["floor_us"]), num(r["fused_us"]), num(r["fused_plain_us"]),
                 num(r["fused_best_us"]),
                 num(r["compile_us"]), num(r["eager_us"]), num(r["v2_us"]),
                 f"{r['pct_of_floor']:.0f}", f"{r['speedup_compile']:.2f}x"]
        if markdown:
            lines.append(f"| {r['case']} | {r['gpu']} | {r['pass']} | " + " | ".join(cells) + " |")
        else:
            lines.append(f"{r['case'][:64]:64s} {r['gpu']:4s} {r['pass']:8s} "
                         + " ".join(f"{c:>8s}" for c in cells))
    return lines


def report(rs: List[dict]) -> List[str]:
    lines = ["Targets (issue 16 item 2), predicted for the default v3 design:"]
    for t in check_targets(rs):
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['what']}: {t['value']:.2f} "
                     f"(goal >= {t['goal']:g})")
        for m in t["misses"][:12]:
            lines.append(f"      miss: {m}")
        if len(t["misses"]) > 12:
            lines.append(f"      ... and {len(t['misses']) - 12} more")
    lines.append("The same targets for variants of the design (rows missing each target):")
    for key, name in VARIANTS.items():
        ts = check_targets(rs, key)
        lines.append(f"  {name:26s} " + "; ".join(
            f"{t['what'].split(' (')[0]}: {t['value']:.2f}"
            + ("" if t["met"] else f" MISSED ({len(t['misses'])})") for t in ts))
    _, wins, text = v2_verdict(rs)
    lines.append(text)
    for r in wins[:12]:
        lines.append(f"      v2 wins: {r['gpu']} {r['pass']} {r['case']}: "
                     f"v3 {r['fused_us']:.1f} us, v2 {r['v2_us']:.1f} us")
    if len(wins) > 12:
        lines.append(f"      ... and {len(wins) - 12} more")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    p.add_argument("--filter", help="only cases whose label matches this regex")
    p.add_argument("--gpu", choices=sorted(GPUS), action="append", help="H100 and/or H200")
    p.add_argument("--markdown", action="store_true", help="the table as markdown")
    p.add_argument("--constants", action="store_true", help="print the constants and sources")
    p.add_argument("--sensitivity", action="store_true",
                   help="the targets with each estimated constant halved and doubled")
    args = p.parse_args(argv)
    cases = gpu_cases()
    if args.filter:
        cases = [c for c in cases if re.search(args.filter, c.label)]
    rs = rows(cases, tuple(args.gpu or ("H100", "H200")))
    if args.json:
        print(json.dumps(rs, indent=1))
        return 0
    if args.sensitivity:
        print("\n".join(sensitivity(cases)))
        return 0
    if args.constants:
        print("\n".join(constants_table()))
        return 0
    print("\n".join(table(rs, args.markdown)))
    print("\ntimes in us; fused = v3 as planned (a counter-zeroing kernel + 2 launches chained "
          "by programmatic dependent launch), plain = the same with plain launches "
          "(SE_FUSED_CUDA_PDL=0), best = the tiles the model predicts fastest; a MODEL, not a "
          "measurement\n")
    if rs and not args.filter:
        print("\n".join(report(rs)))
    elif rs:
        print("\n".join(report(rs)).replace("Targets (", "Targets over the filtered rows only ("))
    return 0


if __name__ == "__main__":
    sys.exit(main())
