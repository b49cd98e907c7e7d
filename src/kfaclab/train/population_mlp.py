"""P copies of ``build_mlp``'s chain, stored stacked along a leading trial dimension.

Layer j of trial p is ``weights[j][p]``: (out_j, in_j + 1), the bias as the last column, so the
bias enters every product through a column of ones appended to the layer's input (as K-FAC's
gradient block [∇W | ∇b] does). Forward and backward are the fused trial's (``train.fused``),
batched over the trials:

* s_1 = X̄ W_1ᵀ with one input shared by all trials (the cohort's batch, or its projection into
  layer 1's eigenbasis, see ``population_kfac``): one GEMM (B, n+1)·(n+1, P·w);
* s_j = h̄_{j−1} W_jᵀ (bmm), h̄_j = [act(s_j) | 1], loss = mean cross-entropy per trial;
* O_L = (softmax − onehot)/B, O_{j−1} = (O_j W_j[:, :w]) ⊙ act'(s_{j−1}).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kfaclab.train.fused_mlp import activate, activation_backward


class StackedMLP:
    """Weights, activations and output gradients of P trials of one architecture."""

    def __init__(self, weights: list[torch.Tensor], activation: str) -> None:
        self.weights = weights  # [(P, out_j, in_j + 1)], contiguous
        self.activation = activation
        self.hidden: list[torch.Tensor] = []  # h̄_1 … h̄_{L−1}: (P, B, w + 1), last column ones
        self.out_grads: list[torch.Tensor] = []  # O_1 … O_L: (P, B, out_j)
        self.log_p: torch.Tensor | None = None  # (P, B, classes)
        self.labels: torch.Tensor | None = None  # (P, B, 1), a view of the batch's labels

    @classmethod
    def from_models(cls, models: list[nn.Sequential], activation: str) -> StackedMLP:
        """The trials' initial weights (each model as ``build_model`` made it)."""
        per_model = [[m for m in model if isinstance(m, nn.Linear)] for model in models]
        weights = []
        for j in range(len(per_model[0])):
            blocks = [torch.cat([ls[j].weight, ls[j].bias[:, None]], 1) for ls in per_model]
            weights.append(torch.stack(blocks).detach())
        return cls(weights, activation)

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def depth(self) -> int:
        return len(self.weights)

    def keep(self, index: torch.Tensor) -> None:
        """Only the trials ``index`` (ascending positions) stay, in that order."""
        self.weights = [w.index_select(0, index) for w in self.weights]
        # Mid-step (after the forward): the survivors' activations stay for their backward.
        self.hidden = [h.index_select(0, index) for h in self.hidden]
        self.out_grads = [o.index_select(0, index) for o in self.out_grads[:-1]]
        if self.out_grads:
            self.out_grads.append(self.out_grads[0].new_empty(0))
        if self.log_p is not None and self.labels is not None:
            self.log_p = self.log_p.index_select(0, index)
            self.labels = self.labels[: len(index)]

    def _buffers(self, batch: int, like: torch.Tensor) -> None:
        size, width = self.size, self.weights[0].shape[1]
        if self.hidden and self.hidden[0].shape[:2] == (size, batch):
            return
        self.hidden = []
        for _ in range(self.depth - 1):
            h = like.new_empty(size, batch, width + 1)
            h[:, :, width] = 1.0
            self.hidden.append(h)
        self.out_grads = [like.new_empty(size, batch, w.shape[1]) for w in self.weights[:-1]]
        self.out_grads.append(like.new_empty(0))  # O_L: set by ``backward``

    def activate(self, s: torch.Tensor, out: torch.Tensor) -> None:
        activate(self.activation, s, out)

    def first_layer(self, first: torch.Tensor) -> torch.Tensor:
        """s_1 of every trial from one shared input ``first`` (B, n + 1): (P, B, w), a view."""
        w0 = self.weights[0]
        size, width = w0.shape[0], w0.shape[1]
        flat = first @ w0.reshape(size * width, -1).T  # (B, P·w)
        return flat.view(first.shape[0], size, width).transpose(0, 1)

    @torch.no_grad()
    def forward(self, first: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every trial's mean cross-entropy on the batch (y: (B,) labels), as a (P,) tensor."""
        batch = first.shape[0]
        self._buffers(batch, first)
        s = self.first_layer(first)
        width = self.weights[0].shape[1]
        for j in range(1, self.depth):
            h = self.hidden[j - 1]
            self.activate(s, h[:, :, :width])
            s = torch.bmm(h, self.weights[j].transpose(1, 2))
        self.log_p = torch.log_softmax(s, dim=2)
        self.labels = y.view(1, batch, 1).expand(self.size, batch, 1)
        return -self.log_p.gather(2, self.labels).squeeze(2).mean(1)

    @torch.no_grad()
    def backward(self) -> None:
        """O_j = ∂L/∂s_j of every layer and trial (the mean loss's, as autograd gives)."""
        assert self.log_p is not None and self.labels is not None
        grad = self.log_p.exp()
        batch = grad.shape[1]
        grad.scatter_add_(2, self.labels, grad.new_full(self.labels.shape, -1.0)).div_(batch)
        self.out_grads[self.depth - 1] = grad
        width = self.weights[0].shape[1]
        for j in range(self.depth - 1, 0, -1):
            back = torch.bmm(grad, self.weights[j][:, :, :width])  # ∂L/∂h_j: (P, B, w)
            out = self.out_grads[j - 1]
            activation_backward(self.activation, back, self.hidden[j - 1][:, :, :width], out)
            grad = out

    def block(self, j: int) -> torch.Tensor:
        """[∇W_j | ∇b_j] of every trial for j ≥ 1: O_jᵀ h̄_{j−1}, (P, out_j, w + 1)."""
        return torch.bmm(self.out_grads[j].transpose(1, 2), self.hidden[j - 1])

    def first_block(self, inputs: torch.Tensor) -> torch.Tensor:
        """O_1ᵀ ``inputs`` for every trial, inputs (B, k) shared: one GEMM, (P, w, k)."""
        o = self.out_grads[0]
        size, batch, width = o.shape
        flat = o.transpose(1, 2).reshape(size * width, batch) @ inputs
        return flat.view(size, width, inputs.shape[1])


def heavy_ball(
    weights: torch.Tensor,
    velocity: torch.Tensor | None,
    direction: torch.Tensor,
    momentum: torch.Tensor,
    neg_lr: torch.Tensor,
) -> torch.Tensor:
    """v ← μv + d (the first step: v = d), θ ← θ + (−η)v per trial; returns v.

    ``momentum`` and ``neg_lr``: (P, 1, 1). The same element-wise arithmetic as the single
    trial's foreach kernels (``engine_directions.apply``, torch's SGD)."""
    if velocity is None:
        velocity = direction.clone()
    else:
        velocity.mul_(momentum).add_(direction)
    weights.addcmul_(velocity, neg_lr)
    return velocity


@torch.no_grad()
def evaluate_stacked(
    weights: list[torch.Tensor],
    activation: str,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 2048,
) -> tuple[list[float], list[int]]:
    """Every trial's mean cross-entropy on (x, y) and its number of correct predictions.

    Sums accumulate per chunk in the model dtype and across chunks in float64, as
    ``observe.evaluate`` does. ``weights`` in real (not rotated) coordinates."""
    size = weights[0].shape[0]
    width, n_in = weights[0].shape[1], weights[0].shape[2] - 1
    # Keep a chunk's activations (P · rows · w) near what one trial's 2048 rows take.
    rows = max(64, min(chunk, (chunk * 256) // max(size, 1)))
    w0 = weights[0][:, :, :n_in].reshape(size * width, n_in)
    b0 = weights[0][:, :, n_in].unsqueeze(1)  # (P, 1, w)
    total = torch.zeros(size, dtype=torch.float64, device=x.device)
    correct = torch.zeros(size, dtype=torch.int64, device=x.device)
    mlp = StackedMLP(weights, activation)
    for start in range(0, len(y), rows):
        xb, yb = x[start : start + rows], y[start : start + rows]
        n = len(yb)
        s = (xb @ w0.T).view(n, size, width).transpose(0, 1) + b0
        for j in range(1, len(weights)):
            h = torch.empty_like(s)
            mlp.activate(s, h)
            w = weights[j]
            s = torch.baddbmm(w[:, :, -1].unsqueeze(1), h, w[:, :, :-1].transpose(1, 2))
        labels = yb.repeat(size)
        losses = F.cross_entropy(s.reshape(size * n, -1), labels, reduction="none")
        total += losses.view(size, n).sum(1).double()
        correct += (s.argmax(dim=2) == yb).sum(1)
    return (total / len(y)).tolist(), correct.tolist()
