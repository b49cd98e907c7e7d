"""Converting λ between kfaclab's scale and the B²-scaled one of a popular PyTorch K-FAC.

kfaclab's curvature block is G⊗A with G = (1/B) Σ gᵢgᵢᵀ, gᵢ = ∂ℓᵢ/∂sᵢ the per-example output
gradient: the per-example Fisher average, whatever the loss's reduction.

Some popular PyTorch K-FAC implementations (kfac-pytorch's Linear helper with the gradient of
the *mean* loss and no rescaling, for one) build G from ∂L/∂sᵢ = gᵢ/B and average over the batch:
G' = (1/B) Σ (gᵢ/B)(gᵢ/B)ᵀ = G/B². Their damped block is
    G'⊗A + λ'I = (G⊗A + B²λ'I) / B²,
so their inverse has the shape of ours with λ = B²λ' (the overall factor B² only rescales the step,
which their learning rate absorbs).

Hence: ours = B² · theirs, theirs = ours / B².
"""

from __future__ import annotations

from kfaclab.errors import UsageError


def _check(lam: float, batch_size: int) -> None:
    if not lam > 0:
        raise UsageError(f"damping must be > 0, got {lam!r}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def from_b2_scaled(lam: float, batch_size: int) -> float:
    """λ written in the B²-scaled convention (G a factor B² smaller) → kfaclab's λ (= B²·λ)."""
    _check(lam, batch_size)
    return lam * batch_size**2


def to_b2_scaled(lam: float, batch_size: int) -> float:
    """kfaclab's λ → the B²-scaled convention's λ (= λ/B²)."""
    _check(lam, batch_size)
    return lam / batch_size**2
