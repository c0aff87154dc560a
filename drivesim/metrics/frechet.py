"""Streaming Gaussian feature statistics and the Fréchet distance between them.

FID (Heusel et al. 2017) and FVD (Unterthiner et al. 2018) fit a Gaussian to network
features of real and generated samples and report

    d^2 = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).

Statistics are accumulated as (count, sum, sum of outer products) in float64, so no sample
is kept in memory and two partial statistics merge by addition (the same reduction as a
distributed all-reduce with ``sum``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drivesim.utils.io import DriveSimInputError, atomic_path


@dataclass
class FeatureStats:
    """Running first and second moments of feature vectors (float64)."""

    count: int
    total: torch.Tensor  # [D] sum of features
    outer: torch.Tensor  # [D, D] sum of x x^T

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return int(self.total.shape[0])

    def update(self, features: torch.Tensor) -> FeatureStats:
        """Add a batch of features ``[N, D]``; returns ``self`` for chaining."""
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features: expected [N, {self.dim}], got {tuple(features.shape)}")
        f = features.detach().to(device="cpu", dtype=torch.float64)
        self.count += int(f.shape[0])
        self.total += f.sum(dim=0)
        self.outer += f.T @ f
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """New statistics of the union of both sample sets."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        return FeatureStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def mean(self) -> torch.Tensor:
        self._need(1)
        return self.total / self.count

    def cov(self, ddof: int = 1) -> torch.Tensor:
        """Covariance dividing by N - ``ddof``: 1 (unbiased) as the FID reference code (np.cov)
        does, 0 as StyleGAN-V / StyleGAN2-ADA's ``FeatureStats.get_mean_cov`` does."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof: expected 0 or 1, got {ddof!r}")
        self._need(2)
        mu = self.mean()
        return (self.outer - self.count * torch.outer(mu, mu)) / (self.count - ddof)

    def _need(self, n: int) -> None:
        if self.count < n:
            raise DriveSimInputError(f"Fréchet statistics need at least {n} samples (videos shorter "
                                     "than one clip give none)", field="samples", value=self.count)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write as ``.npz`` (no pickle) atomically."""
        with atomic_path(path, overwrite=overwrite) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, count=np.int64(self.count), total=self.total.numpy(),
                         outer=self.outer.numpy())

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as data:
                count, total, outer = int(data["count"]), data["total"], data["outer"]
        except (OSError, KeyError, ValueError) as err:
            raise DriveSimInputError(f"not a feature-statistics file: {err}", path=p) from err
        if total.ndim != 1 or outer.shape != (total.shape[0], total.shape[0]):
            raise DriveSimInputError("inconsistent shapes", path=p, field="outer", value=outer.shape)
        return cls(count, torch.from_numpy(total).double(), torch.from_numpy(outer).double())


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigen-decomposition.

    Round-off can leave tiny negative eigenvalues on a singular covariance (fewer samples
    than dimensions); they are clamped to 0 instead of producing NaN or complex values.
    """
    sym = 0.5 * (matrix + matrix.T)
    vals, vecs = torch.linalg.eigh(sym)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Tr((S1 S2)^{1/2}) through the symmetric form Tr((S1^{1/2} S2 S1^{1/2})^{1/2}).

    S1 S2 is not symmetric, so a general matrix sqrt of it (scipy.linalg.sqrtm) can return
    complex parts; S1^{1/2} S2 S1^{1/2} is similar to S1 S2 (same eigenvalues) and PSD, so
    a symmetric eigen-solver is exact and stable.
    """
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = 0.5 * (middle + middle.T)
    return torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor,
                     mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}), in float64."""
    mu1, mu2 = mu1.double(), mu2.double()
    sigma1, sigma2 = sigma1.double(), sigma2.double()
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
                         f"sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}")
    mean_term = (mu1 - mu2).square().sum()
    cov_term = sigma1.trace() + sigma2.trace() - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # The exact value is >= 0; round-off on identical sets can give -1e-12.
    return max(float(mean_term + cov_term), 0.0)


def frechet_distance_stats(a: FeatureStats, b: FeatureStats, ddof: int = 1) -> float:
    """Fréchet distance of two streamed statistics; ``ddof`` as in :meth:`FeatureStats.cov`."""
    return frechet_distance(a.mean(), a.cov(ddof), b.mean(), b.cov(ddof))
