"""An FSDP2 (torch.distributed.fsdp.fully_shard) training step with swapped SE blocks:
CPU, gloo, two processes; the model, data, step and comparison of tests/test_ddp.py.

Each FusedSEBlock is its own FSDP unit (its parameters are all-gathered around the
fused op's forward and backward) and the root holds the rest. Each rank trains on
half of the batch; FSDP averages the gradients across ranks, so the gathered
gradients and the parameters after one SGD step must equal those of the original
(eager, unswapped) model on the whole batch in one process, and each rank's loss
that model's loss on the rank's half. Sharding must keep what the swap promises:
the same state_dict keys as the unswapped model and no duplicated parameters.
float32, tests.helpers.TOL.
"""
import pytest
import torch

from se_fused import FusedSEBlock, SEBlock, replace_se_blocks

from .test_ddp import (WORLD, _assert_ranks_match_single_process, _model,  # noqa: F401
                       _process_group, _rank_step, _spawn, pytestmark)

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip("this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)",
                allow_module_level=True)


def _worker(rank, port, out_dir):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    with _process_group(rank, port):
        model = _model()
        keys = list(model.state_dict())
        n_params = len(list(model.parameters()))
        originals = [m for m in model.modules() if isinstance(m, SEBlock)]
        model = replace_se_blocks(model)
        fused = [m for m in model.modules() if isinstance(m, FusedSEBlock)]
        assert len(fused) == len(originals) == 2

        mesh = init_device_mesh("cpu", (WORLD,))
        for block in fused:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)

        # The fused blocks still hold the original SE modules' convolutions, whose
        # parameters FSDP has replaced by shards, once each.
        for block, original in zip(fused, originals):
            assert block.fc1 is original.fc1 and block.fc2 is original.fc2
        assert list(model.state_dict()) == keys
        params = list(model.parameters())
        assert len(params) == n_params and len({id(p) for p in params}) == n_params
        assert all(isinstance(p, DTensor) for p in params)

        _rank_step(rank, model, model, out_dir, gather=DTensor.full_tensor)


def test_fsdp2_two_processes_match_single_process(tmp_path):
    _spawn(tmp_path, worker=_worker)
    _assert_ranks_match_single_process(tmp_path)
