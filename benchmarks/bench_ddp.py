"""Data-parallel K-FAC: one step on 2 processes (gloo, half the batch each) against 1 process.

The reference MLP 784-100×5-10, batch 128 in total, exact damping, inverse every 10, one thread
per process. Each configuration runs ``--steps`` steps after a warm-up, ``--repeats`` times; the
median ms/step is reported (for 2 ranks: rank 0's wall time per step, which includes the gathers
of the capture rows and DDP's gradient all-reduce).

    python benchmarks/bench_ddp.py [--steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from kfaclab import KFAC, KFACOptions
from kfaclab.models import build_mlp

BATCH = 128


def _batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.rand(BATCH, 784, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
        for _ in range(steps)
    ]


def _time(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int) -> float:
    opt = KFAC(model, lr=0.01, damping=1e-2, momentum=0.9, options=KFACOptions(inverse_every=10))
    start = 0.0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(loss=loss)
    return (time.perf_counter() - start) / (len(batches) - warmup)


def _rank(rank: int, port: int, steps: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(build_mlp())
    half = BATCH // 2
    shard = [(x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])
             for x, y in _batches(steps + 10)]  # fmt: skip
    seconds = _time(model, shard, warmup=10)
    if rank == 0:
        Path(out).write_text(str(seconds))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    single, double = [], []
    for _ in range(args.repeats):  # interleaved
        torch.manual_seed(0)
        single.append(_time(build_mlp(), _batches(args.steps + 10), warmup=10))
        with tempfile.TemporaryDirectory() as folder:
            out = str(Path(folder) / "rank0.txt")
            mp.spawn(_rank, args=(_free_port(), args.steps, out), nprocs=2, join=True)
            double.append(float(Path(out).read_text()))
    one, two = statistics.median(single) * 1e3, statistics.median(double) * 1e3
    print(f"K-FAC step, batch {BATCH} in total, 1 thread per process, median of {args.repeats}")
    print(f"1 process:                 {one:7.2f} ms/step")
    print(f"2 processes (gloo, DDP):   {two:7.2f} ms/step   ({one / two:.2f}× the 1-process speed)")


if __name__ == "__main__":
    main()
