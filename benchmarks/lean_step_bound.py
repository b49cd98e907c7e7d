"""How fast a sweep trial's step could be: the same products as a K-FAC step, with no framework.

    PYTHONPATH=src python benchmarks/lean_step_bound.py [--steps 100] [--repeats 3]

Not K-FAC: a bound. For the reference MLP (784-100×5-10, ReLU, batch 128, one thread) it runs,
for k trials at once, the products one regular step of a sweep trial does (forward with layer 1's
deferred correction, backward by hand without layer 1's weight gradient, the stacked factor
updates, the stacked exact preconditioning of the hidden layers, layer 1's rotated gradient from
the shared batch projection P, heavy-ball momentum) as straight-line batched torch operations on
preallocated stacks: no autograd, no hooks, no per-layer Python. Eigenbases and eigenvalues are
fixed random placeholders and inversions are left out (they cost the same either way). k = 1 is
one trial as a fused step would run it; k > 1 is k trials in lockstep sharing each operation
(every trial of a sweep sees the same batches, so x and P are common to all of them).

Compare its k = 1 time with ``bench_step.py``'s ``kfac-exact-sweep`` (fwd + bwd + step of the
real optimizer) measured in the same hour: the difference is what the general implementation
spends on per-operation and Python cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _data import mnist_dir
from kfaclab.data import load_dataset

ACTIVE = 697  # layer 1's active input coordinates in a typical MNIST running factor


def _orthogonal(*shape: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(*shape))[0]


def per_trial_step_ms(k: int, steps: int, x_all: torch.Tensor, y_all: torch.Tensor) -> float:
    """Milliseconds per trial and step for k trials in lockstep."""
    torch.manual_seed(0)
    w1, b1 = torch.randn(784, 100 * k) * 0.03, torch.zeros(100 * k)
    wh, bh = torch.randn(k, 4, 100, 100) * 0.1, torch.zeros(k, 4, 1, 100)
    w6, b6 = torch.randn(k, 100, 10) * 0.1, torch.zeros(k, 1, 10)
    q_a1 = _orthogonal(ACTIVE, ACTIVE)
    q_g1 = _orthogonal(k, 100, 100)
    pending, velocity1 = torch.zeros(k, 100, ACTIVE), torch.zeros(k, 100, ACTIVE)
    q_g, q_a = _orthogonal(k * 4, 100, 100), _orthogonal(k * 4, 101, 101)
    q_g_t, q_a_t = q_g.transpose(1, 2).contiguous(), q_a.transpose(1, 2).contiguous()
    denominator, denominator1 = torch.rand(k * 4, 100, 101) + 0.1, torch.rand(k, 100, ACTIVE) + 0.1
    factor_a, factor_g = torch.zeros(k * 5, 101, 101), torch.zeros(k * 5, 100, 100)
    momentum = torch.zeros(k * 4, 100, 101)
    lr = torch.full((k, 1, 1), 1e-3)
    lr_hidden = lr.repeat_interleave(4, 0)
    projection = x_all[:128, :ACTIVE] @ q_a1  # per worker, from the input stream
    order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * 128 : (step + 1) * 128]
        x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
        # forward: layer 1 for all k trials in one product, minus the pending rotated update
        z = torch.addmm(b1, x, w1).view(128, k, 100).transpose(0, 1)
        z = z - torch.bmm(torch.matmul(projection, pending.transpose(1, 2)), q_g1.transpose(1, 2))
        hs = [torch.relu(z)]
        for j in range(4):
            hs.append(torch.relu(torch.baddbmm(bh[:, j], hs[-1], wh[:, j])))
        log_p = torch.log_softmax(torch.baddbmm(b6, hs[-1], w6), -1)
        target = y.view(1, 128, 1).expand(k, 128, 1)
        _ = (-log_p.gather(2, target).mean((1, 2))).tolist()  # the losses, one sync
        # backward by hand: output gradients O of every layer
        grad = log_p.exp().scatter_add_(2, target, torch.full((k, 128, 1), -1.0)).div_(128)
        outputs_grads = [grad]
        grad6 = torch.bmm(hs[4].transpose(1, 2), grad)
        grad = torch.bmm(grad, w6.transpose(1, 2)) * (hs[4] > 0)
        for j in range(3, -1, -1):
            outputs_grads.append(grad)
            grad = torch.bmm(grad, wh[:, j].transpose(1, 2)) * (hs[j] > 0)
        outputs_grads.append(grad)
        o_hidden = torch.stack(outputs_grads[1:5][::-1], 1).reshape(k * 4, 128, 100)
        h_bar = torch.stack(hs[:4], 1).reshape(k * 4, 128, 100)
        h_bar = torch.cat([h_bar, h_bar.new_ones(k * 4, 128, 1)], 2)
        blocks = torch.bmm(o_hidden.transpose(1, 2), h_bar)
        # factors: hidden and last inputs (A), first five output gradients (G)
        a_rows = torch.stack(hs, 1).reshape(k * 5, 128, 100)
        a_rows = torch.cat([a_rows, a_rows.new_ones(k * 5, 128, 1)], 2)
        factor_a.mul_(0.95).baddbmm_(a_rows.transpose(1, 2), a_rows, alpha=0.05 / 128)
        g_rows = torch.stack(outputs_grads[::-1][:5], 1).reshape(k * 5, 128, 100)
        factor_g.mul_(0.95).baddbmm_(g_rows.transpose(1, 2), g_rows, alpha=0.05 * 128)
        # hidden layers: exact damped preconditioning, momentum, update
        direction = q_g @ ((q_g_t @ blocks @ q_a) / denominator) @ q_a_t
        momentum.mul_(0.9).add_(direction)
        update = (momentum * lr_hidden).view(k, 4, 100, 101)
        wh.sub_(update[..., :100].transpose(2, 3))
        bh.sub_(update[..., 100].unsqueeze(2))
        # layer 1: rotated gradient from the shared projection, kept rotated
        rotated_o = torch.bmm(outputs_grads[-1], q_g1).transpose(1, 2)
        rotated = torch.bmm(rotated_o, projection.expand(k, -1, -1))
        velocity1.mul_(0.9).add_(rotated / denominator1)
        pending.add_(velocity1 * lr)
        w6.sub_(grad6 * lr)
    return (time.perf_counter() - start) / steps / k * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist", mnist_dir())
    sizes = (1, 2, 4, 8)
    for k in sizes:
        per_trial_step_ms(k, 10, data.train_x, data.train_y)  # warm-up
    times: dict[int, list[float]] = {k: [] for k in sizes}
    for _ in range(args.repeats):
        for k in sizes:  # interleaved, so machine drift hits every k alike
            times[k].append(per_trial_step_ms(k, args.steps, data.train_x, data.train_y))
    for k in sizes:
        print(f"k = {k}: {statistics.median(times[k]):.2f} ms per trial and step (median)")


if __name__ == "__main__":
    main()
