"""A DistributedDataParallel training step (CPU, gloo, two processes) with swapped SE blocks.

Each rank runs the swapped model on half of the batch; DDP averages the
gradients, which must then equal the gradients of the mean loss over the whole
batch computed in one process by the original (eager, unswapped) model, and each
rank's loss that model's loss on the rank's half. tests/test_fsdp.py reuses the
process group, step and comparison helpers.
float32, tests.helpers.TOL.
"""
import contextlib
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


@contextlib.contextmanager
def _process_group(rank, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        yield
        # Without it one rank can tear gloo down while the other still uses it,
        # which aborts that rank ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank_step(rank, model, forward, out_dir, gather=lambda t: t):
    """One SGD step of model on this rank's half of the batch through forward; saves
    the loss, and the gradients and new parameters as gather(tensor) gives them whole."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    per_rank = BATCH // WORLD
    sl = slice(rank * per_rank, (rank + 1) * per_rank)
    loss = F.cross_entropy(forward(x[sl]), y[sl])
    loss.backward()
    grads = {n: gather(p.grad).detach().clone() for n, p in model.named_parameters()}
    opt.step()
    params = {n: gather(p).detach().clone() for n, p in model.named_parameters()}
    torch.save({"loss": loss.detach(), "grads": grads, "params": params},
               os.path.join(out_dir, f"rank{rank}.pt"))


def _worker(rank, port, out_dir):
    with _process_group(rank, port):
        model = replace_se_blocks(_model())
        assert sum(isinstance(m, FusedSEBlock) for m in model.modules()) == 2
        _rank_step(rank, model, nn.parallel.DistributedDataParallel(model), out_dir)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(out_dir, timeout=90, worker=_worker):
    ctx = mp.start_processes(worker, args=(_free_port(), str(out_dir)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):  # raises if a worker failed
            if time.monotonic() > deadline:
                pytest.fail(f"{worker.__module__} workers did not finish within {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


def test_ddp_two_processes_match_single_process(tmp_path):
    _spawn(tmp_path)
    results = _assert_ranks_match_single_process(tmp_path)
    # the ranks agree exactly with each other (DDP's allreduce)
    for k in results[0]["grads"]:
        assert torch.equal(results[0]["grads"][k], results[1]["grads"][k]), k


def _assert_ranks_match_single_process(out_dir):
    """Each rank's loss equals the original eager model's loss on that rank's half;
    its gradients and new parameters those of one step on the whole batch."""
    results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(WORLD)]
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _data()
    with torch.no_grad():
        half_losses = [F.cross_entropy(model(xs), ys)
                       for xs, ys in zip(x.chunk(WORLD), y.chunk(WORLD))]
    F.cross_entropy(model(x), y).backward()
    expected = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    expected_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    for rank, res in enumerate(results):
        torch.testing.assert_close(res["loss"], half_losses[rank], **TOL)
        assert res["grads"].keys() == expected.keys()
        for k in expected:
            torch.testing.assert_close(res["grads"][k], expected[k], **TOL,
                                       msg=lambda m, k=k, r=rank: f"rank {r} grad {k}: {m}")
            torch.testing.assert_close(res["params"][k], expected_params[k], **TOL,
                                       msg=lambda m, k=k, r=rank: f"rank {r} param {k}: {m}")
    return results
