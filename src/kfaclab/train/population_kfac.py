"""K-FAC for a cohort of P trials that see the same batches (``population``), stacked.

The sweep trial's mathematics (``optim.engine`` with the fused backend), per trial p with its own
λ_p, lr and momentum μ_p, batched over the trials:

* running factors A_j, G_j: the first update takes the batch statistic, then F ← βF + (1−β)F̂,
  with A = h̄ᵀh̄/B and G = B·OᵀO (g_i = B·O_i, the per-example gradients of the mean loss);
* every ``inverse_every`` steps: eigh of every A_j and G_j (batched ``torch.linalg.eigh``,
  eigenvalues clamped at 0; a failed batch falls back to ``robust_eigh`` trial by trial);
* d = Q_G [(Q_Gᵀ ∇ Q_A) ⊘ (g aᵀ + λ_p)] Q_Aᵀ (exact damping), heavy ball v ← μv + d, θ ← θ − ηv.

Shared work is done once per cohort: layer 1's input factor A_1 depends on the data alone, so
its update, its decomposition (``expanded`` to all n+1 coordinates: inactive pixels get unit
vectors and eigenvalue 0, exactly as the single trial's inactive coordinates) and the batch's
projection P = X̄ Q_A are shared. Layer 1's weights and momentum are kept *in A_1's eigenbasis*
(W̃ = W Q_A, Ṽ = V Q_A): the forward is s_1 = P W̃ᵀ, the gradient's rotation (O Q_G)ᵀ P, and the
step never rotates back; at a new basis both are carried over by C = Q_oldᵀ Q_new (the single
trial's deferred rotation, ``optim.deferred``, in another form: the same mathematics).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from kfaclab.curvature.decompose import FallbackCounter, robust_eigh
from kfaclab.curvature.diagnostics import layer_diagnostics
from kfaclab.curvature.eigen import diagonal_eigen
from kfaclab.train.population_mlp import StackedMLP, heavy_ball
from kfaclab.train.population_stream import LayerOne, Streams

Eigen = tuple[torch.Tensor, torch.Tensor]  # values (P, k) ascending, vectors (P, k, k)


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """[X | 1]: (B, n + 1)."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


def eigh_on_cpu(factors: torch.Tensor) -> Eigen:
    """``torch.linalg.eigh`` of (P, k, k) factors on the host, the batch split over up to
    ``os.cpu_count()`` threads (torch releases the GIL in the decomposition), results moved back
    to the factors' device: for a GPU whose batched eigh of mid-sized matrices is a loop of
    kernel launches (benchmarks/device_check.sh measures both)."""
    host = factors.to("cpu")
    workers = min(len(host), os.cpu_count() or 1)
    if workers <= 1:
        values, vectors = torch.linalg.eigh(host)
    else:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(torch.linalg.eigh, host.chunk(workers)))
        values, vectors = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return values.to(factors.device), vectors.to(factors.device)


def batched_eigh(
    factors: torch.Tensor,
    previous: Eigen | None,
    counters: list[FallbackCounter],
    on_cpu: bool = False,
) -> Eigen:
    """Eigenvalues (clamped at 0) and eigenvectors of P symmetric factors (P, k, k) at once
    (``on_cpu``: through ``eigh_on_cpu``); if any is non-finite or LAPACK fails, each through
    the single trial's fallback ladder, keeping a trial's previous decomposition (or its
    diagonal) where even that fails."""
    if bool(torch.isfinite(factors).all()):
        try:
            values, vectors = eigh_on_cpu(factors) if on_cpu else torch.linalg.eigh(factors)
            return values.clamp_min_(0.0), vectors
        except torch.linalg.LinAlgError:
            pass
    values_list, vectors_list = [], []
    for p, counter in enumerate(counters):
        got = robust_eigh(factors[p], counter)
        if got is None:
            if previous is not None:
                got = (previous[0][p], previous[1][p])
            else:
                diagonal = diagonal_eigen(factors[p])
                got = (diagonal.values, diagonal.vectors)
        values_list.append(got[0])
        vectors_list.append(got[1])
    return torch.stack(values_list), torch.stack(vectors_list)


class StackedKFAC:
    """The K-FAC state of one cohort: factors, eigenbases and momentum of P trials."""

    def __init__(
        self,
        mlp: StackedMLP,
        damping: torch.Tensor,
        momentum: torch.Tensor,
        decay: float,
        names: list[str],
        streams: Streams,
        seed: int,
        eigh_on_cpu: bool = False,
    ) -> None:
        self.mlp = mlp
        self.damping = damping  # λ_p: (P,)
        self.momentum = momentum.view(-1, 1, 1)  # μ_p
        self.decay = decay
        self.names = names
        depth = mlp.depth
        self.a: list[torch.Tensor | None] = [None] * depth  # A_j, j ≥ 1: (P, w+1, w+1)
        self.g: list[torch.Tensor | None] = [None] * depth  # G_j: (P, out, out)
        self.eig_a: list[Eigen | None] = [None] * depth
        self.eig_g: list[Eigen | None] = [None] * depth
        self.denominators: list[torch.Tensor] = []  # g aᵀ + λ per layer: (P, out, in+1)
        self.velocity: list[torch.Tensor | None] = [None] * depth
        self.fallbacks = [FallbackCounter() for _ in range(mlp.size)]
        self.shared_fallbacks = FallbackCounter()  # layer 1's shared decompositions
        # Layer 1's input factor A_1 (n+1, n+1), shared by the cohort and with every cohort of
        # its seed; its basis Q_A in force is the one layer 1's weights are kept in (W̃ = W Q_A).
        self.layer_one = LayerOne(streams, seed, decay, self.shared_fallbacks)
        self.eigh_on_cpu = eigh_on_cpu  # the trials' factors decomposed on the host

    def keep(self, index: torch.Tensor) -> None:
        """Only the trials ``index`` stay (see ``StackedMLP.keep``; the shared state stays)."""
        self.mlp.keep(index)

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, index)

        self.damping = self.damping.index_select(0, index)
        self.momentum = self.momentum.index_select(0, index)
        self.a = [pick(t) for t in self.a]
        self.g = [pick(t) for t in self.g]
        self.eig_a = [None if e is None else (pick(e[0]), pick(e[1])) for e in self.eig_a]  # type: ignore[misc]
        self.eig_g = [None if e is None else (pick(e[0]), pick(e[1])) for e in self.eig_g]  # type: ignore[misc]
        self.denominators = [t.index_select(0, index) for t in self.denominators]
        self.velocity = [pick(t) for t in self.velocity]
        self.fallbacks = [self.fallbacks[i] for i in index.tolist()]

    # --- layer 1's shared input ---

    def first_input(self, x_bar: torch.Tensor, t: int) -> torch.Tensor:
        """What layer 1's (rotated) weights multiply at step t: P = X̄ Q_A in the basis in
        force, or X̄ = [X | 1] itself before the first basis."""
        return self.layer_one.projection(x_bar, t)

    def real_weights(self) -> list[torch.Tensor]:
        """Every layer's weights in real coordinates (layer 1 rotated back: W = W̃ Q_Aᵀ)."""
        weights = list(self.mlp.weights)
        basis = self.layer_one.basis
        if basis is not None:
            w0 = weights[0]
            size, width, n = w0.shape
            weights[0] = (w0.reshape(size * width, n) @ basis.vectors.T).view(w0.shape)
        return weights

    # --- factors and decompositions ---

    @torch.no_grad()
    def update_factors(self, x: torch.Tensor) -> None:
        """Every running factor from this step's batch (the capture of ``mlp``'s last pass)."""
        mlp, decay = self.mlp, self.decay
        self.layer_one.observe(x)  # A_1's update is done when (and if) an inversion needs it
        batch = x.shape[0]
        for j in range(mlp.depth):
            if j > 0:
                rows = mlp.hidden[j - 1]
                self.a[j] = _ema(self.a[j], rows, decay, 1.0 / batch)
            # g_i = B · O_i: G = (1/B) Σ g gᵀ = B · OᵀO
            self.g[j] = _ema(self.g[j], mlp.out_grads[j], decay, float(batch))

    @torch.no_grad()
    def invert(self, t: int) -> None:
        """New eigenbases at step t: layer 1's shared one (layer 1's weights and momentum move
        into it) and every trial's A_j, G_j."""
        change = self.layer_one.invert(t)
        if change is not None:
            self._rotate_first_layer(change)
        basis = self.layer_one.basis
        assert basis is not None
        for j in range(self.mlp.depth):
            if j > 0:
                a = self.a[j]
                assert a is not None
                self.eig_a[j] = batched_eigh(a, self.eig_a[j], self.fallbacks, self.eigh_on_cpu)
            g = self.g[j]
            assert g is not None
            self.eig_g[j] = batched_eigh(g, self.eig_g[j], self.fallbacks, self.eigh_on_cpu)
        self.denominators = []
        lam = self.damping.view(-1, 1, 1)
        for j in range(self.mlp.depth):
            values_g = self.eig_g[j]
            assert values_g is not None
            if j == 0:
                values_a = basis.values.view(1, 1, -1)
            else:
                eig_a = self.eig_a[j]
                assert eig_a is not None
                values_a = eig_a[0].unsqueeze(1)
            # torch.outer(g, a) + λ of ExactInverse.damped, per trial
            self.denominators.append(values_g[0].unsqueeze(2) * values_a + lam)

    def _rotate_first_layer(self, change: torch.Tensor) -> None:
        """W̃ ← W̃ C and Ṽ ← Ṽ C: layer 1's weights and momentum into the new basis."""
        for i, t in enumerate((self.mlp.weights[0], self.velocity[0])):
            if t is None:
                continue
            size, width, n = t.shape
            rotated = (t.reshape(size * width, n) @ change).view(size, width, n)
            if i == 0:
                self.mlp.weights[0] = rotated
            else:
                self.velocity[0] = rotated

    # --- the step ---

    @torch.no_grad()
    def step(self, projected: torch.Tensor, neg_lr: torch.Tensor) -> None:
        """Directions and the heavy ball for every trial; ``projected``: this batch's X̄ Q_A in
        the basis now in force (B, n+1); ``neg_lr``: −η_t per trial, (P, 1, 1)."""
        mlp = self.mlp
        for j in range(mlp.depth):
            eig_g = self.eig_g[j]
            assert eig_g is not None
            q_g = eig_g[1]
            if j == 0:  # in A_1's eigenbasis: (O Q_G)ᵀ P, damped, Q_G · (·)
                o = mlp.out_grads[0]
                size, batch, width = o.shape
                oq = torch.bmm(o, q_g).transpose(1, 2).reshape(size * width, batch)
                rotated = (oq @ projected).view(size, width, -1)
                direction = torch.bmm(q_g, rotated.div_(self.denominators[0]))
            else:
                eig_a = self.eig_a[j]
                assert eig_a is not None
                q_a = eig_a[1]
                rotated = torch.bmm(torch.bmm(q_g.transpose(1, 2), mlp.block(j)), q_a)
                rotated.div_(self.denominators[j])
                direction = torch.bmm(torch.bmm(q_g, rotated), q_a.transpose(1, 2))
            self.velocity[j] = heavy_ball(
                mlp.weights[j], self.velocity[j], direction, self.momentum, neg_lr
            )

    # --- read-outs ---

    def diagnostics(self) -> list[dict[str, dict[str, Any]]]:
        """Per trial, per layer: ``layer_diagnostics`` of the curvature in force (the single
        trial's ``KFACEngine.diagnostics``)."""
        out: list[dict[str, dict[str, Any]]] = []
        assert self.layer_one.basis is not None
        values_a1 = self.layer_one.basis.values
        lams = self.damping.tolist()
        for p, lam in enumerate(lams):
            layers: dict[str, dict[str, Any]] = {}
            for j, name in enumerate(self.names):
                eig_g, eig_a = self.eig_g[j], self.eig_a[j]
                assert eig_g is not None
                values_a = values_a1 if j == 0 else eig_a[0][p]  # type: ignore[index]
                layers[name] = layer_diagnostics(values_a, eig_g[0][p], lam)
            out.append(layers)
        return out


def _ema(
    running: torch.Tensor | None, rows: torch.Tensor, decay: float, scale: float
) -> torch.Tensor:
    """βF + (1−β)·scale·RᵀR per trial (the first update: scale·RᵀR), rows R: (P, B, d).
    The single trial's ``factors._update`` with scale²/N folded into ``scale``."""
    gram_rows = rows.transpose(1, 2)
    if running is None:
        return torch.bmm(gram_rows, rows).mul_(scale)
    return running.mul_(decay).baddbmm_(gram_rows, rows, alpha=(1.0 - decay) * scale)
