"""A DistributedDataParallel training step (CPU, gloo, two processes) with swapped SE blocks.

Each rank runs the swapped model on half of the batch; DDP averages the
gradients, which must then equal the gradients of the mean loss over the whole
batch computed in one process by the original (eager, unswapped) model.
float32, tests.helpers.TOL.
"""
import os
import socket
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from se_fused import FusedSEBlock, SEBlock, replace_se_blocks

from .helpers import TOL as HELPER_TOL

WORLD = 2
BATCH = 8
TOL = HELPER_TOL[torch.float32]

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        SEBlock(16, 4),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        SEBlock(16, rd_channels=8, activation="silu", gate="hardsigmoid"),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 8, 8, generator=g), torch.randint(0, 5, (BATCH,), generator=g)


def _worker(rank, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        model = replace_se_blocks(_model())
        assert sum(isinstance(m, FusedSEBlock) for m in model.modules()) == 2
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        x, y = _data()
        per_rank = BATCH // WORLD
        sl = slice(rank * per_rank, (rank + 1) * per_rank)
        loss = F.cross_entropy(ddp(x[sl]), y[sl])
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save({"grads": grads, "params": params}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out_dir, timeout=90):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):  # raises if a worker failed
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


def test_ddp_two_processes_match_single_process(tmp_path):
    _spawn(tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    # one process, the original eager model, the whole batch
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    F.cross_entropy(model(x), y).backward()
    expected = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    expected_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    for rank, res in enumerate(results):
        assert res["grads"].keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(res["grads"][k], expected[k], **TOL,
                                       msg=lambda m, k=k, r=rank: f"rank {r} grad {k}: {m}")
            torch.testing.assert_close(res["params"][k], expected_params[k], **TOL,
                                       msg=lambda m, k=k, r=rank: f"rank {r} param {k}: {m}")
    # the ranks agree exactly with each other (DDP's allreduce)
    for k in expected:
        assert torch.equal(results[0]["grads"][k], results[1]["grads"][k]), k
