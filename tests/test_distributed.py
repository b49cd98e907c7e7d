"""Data-parallel K-FAC (gloo, two real processes on the CPU) takes one process's step.

Two ranks each see half of every batch through DistributedDataParallel; a single process sees the
whole batch. After several steps (factors, inversions, momentum) every parameter agrees with the
single process's to float64 rounding, and the two ranks agree exactly with each other.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from kfaclab.optim import KFAC, KFACOptions

STEPS, BATCH = 4, 16


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 5, 6),
        nn.Tanh(), nn.Linear(6, 3),
    ).double()  # fmt: skip


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        (torch.randn(BATCH, 1, 5, 5, generator=g, dtype=torch.float64),
         torch.randint(0, 3, (BATCH,), generator=g))
        for _ in range(STEPS)
    ]  # fmt: skip


def _options() -> KFACOptions:
    return KFACOptions(inverse_every=2)


def _train(model: nn.Module, opt: KFAC, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss)


def _rank(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = nn.parallel.DistributedDataParallel(_model())
    opt = KFAC(model, lr=0.1, damping=1e-2, momentum=0.5, options=_options())
    half = BATCH // 2
    shard = [(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])
             for x, y in _batches()]  # fmt: skip
    _train(model, opt, shard)
    torch.save([p.detach() for p in model.module.parameters()], f"{out}/rank{rank}.pt")
    # both ranks tear down together: one destroying the group while the other still used it
    # aborted in gloo's teardown (SIGABRT) now and then on a loaded machine
    del opt, model
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# CPU only: gloo ranks on one machine's CPU (data-parallel CUDA wants NCCL and a GPU per rank).
def test_two_ranks_take_the_single_process_step_on_the_whole_batch(tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    model = _model()
    _train(model, KFAC(model, lr=0.1, damping=1e-2, momentum=0.5, options=_options()), _batches())
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for single, p0, p1 in zip(model.parameters(), rank0, rank1, strict=True):
        assert torch.equal(p0, p1)
        torch.testing.assert_close(p0, single.detach(), rtol=1e-10, atol=1e-12)
