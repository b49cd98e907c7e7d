"""Factorisations of Kronecker factors that never end a training run.

float32 ``eigh`` fails to converge on ill-conditioned K-FAC factors (seen on this project's
machines). The ladder, each rung counted in ``FallbackCounter``:

1. the factorisation in the factor's own dtype;
2. the same in float64, cast back;
3. float64 with a jitter of ``JITTER_SCALE · max(tr(M)/n, tiny)`` added to the diagonal, growing
   ×10 up to ``MAX_JITTER_TRIES`` times; the jitter shifts the eigenvalues by a known amount,
   which is subtracted again for ``eigh`` (so only the eigenvectors carry the perturbation).

If every rung fails (a non-finite factor, for instance) the caller gets ``None`` and keeps its
previous decomposition.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

JITTER_SCALE = 1e-6
MAX_JITTER_TRIES = 6


@dataclass
class FallbackCounter:
    """How often each rung of the ladder was needed (observable via ``KFAC.counters``)."""

    float64_retries: int = 0
    jitter_retries: int = 0
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "decomposition_float64_retries": self.float64_retries,
            "decomposition_jitter_retries": self.jitter_retries,
            "decomposition_failures": self.failures,
        }


def _jitter_base(m: torch.Tensor) -> float:
    n = m.shape[0]
    mean_diag = float(torch.diagonal(m).abs().sum()) / max(n, 1)
    return JITTER_SCALE * max(mean_diag, torch.finfo(torch.float64).tiny)


def robust_eigh(
    m: torch.Tensor, counter: FallbackCounter
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Eigenvalues (ascending, clamped at 0) and eigenvectors of the symmetric PSD matrix ``m``."""
    dtype = m.dtype
    if not bool(torch.isfinite(m).all()):
        counter.failures += 1
        return None
    try:
        evals, evecs = torch.linalg.eigh(m)
        return evals.clamp_min_(0.0), evecs
    except torch.linalg.LinAlgError:
        pass
    m64 = m.to(torch.float64)
    counter.float64_retries += 1
    try:
        evals, evecs = torch.linalg.eigh(m64)
        return evals.clamp_min(0.0).to(dtype), evecs.to(dtype)
    except torch.linalg.LinAlgError:
        pass
    jitter = _jitter_base(m64)
    eye = torch.eye(m.shape[0], dtype=torch.float64, device=m.device)
    for _ in range(MAX_JITTER_TRIES):
        counter.jitter_retries += 1
        try:
            evals, evecs = torch.linalg.eigh(m64 + jitter * eye)
            return (evals - jitter).clamp_min(0.0).to(dtype), evecs.to(dtype)
        except torch.linalg.LinAlgError:
            jitter *= 10.0
    counter.failures += 1
    return None


def robust_damped_inverse(
    m: torch.Tensor, damping: float, counter: FallbackCounter
) -> torch.Tensor | None:
    """(m + damping·I)⁻¹ via Cholesky, for the symmetric PSD matrix ``m`` and damping > 0."""
    dtype = m.dtype
    if not bool(torch.isfinite(m).all()):
        counter.failures += 1
        return None
    n = m.shape[0]
    for attempt_dtype in (dtype, torch.float64):
        if attempt_dtype != dtype:
            counter.float64_retries += 1
        shifted = m.to(attempt_dtype) + damping * torch.eye(n, dtype=attempt_dtype, device=m.device)
        chol, info = torch.linalg.cholesky_ex(shifted)
        if int(info) == 0:
            return torch.cholesky_inverse(chol).to(dtype)
    m64 = m.to(torch.float64)
    jitter = _jitter_base(m64)
    eye = torch.eye(n, dtype=torch.float64, device=m.device)
    for _ in range(MAX_JITTER_TRIES):
        counter.jitter_retries += 1
        chol, info = torch.linalg.cholesky_ex(m64 + (damping + jitter) * eye)
        if int(info) == 0:
            return torch.cholesky_inverse(chol).to(dtype)
        jitter *= 10.0
    counter.failures += 1
    return None
