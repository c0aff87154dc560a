"""Fréchet Video Distance (Unterthiner et al. 2018) as a distributed-safe torchmetrics Metric.

States are the streamed moments of real and fake I3D features (count, sum, sum of outer
products) in float64, each reduced with ``sum`` across ranks, so a DDP evaluation equals a
single-process one exactly (up to float64 addition order).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics import Metric

from drivesim.metrics.frechet import FeatureStats, frechet_distance_stats
from drivesim.metrics.protocol import MIN_RELIABLE_CLIPS


class FeatureFrechetMetric(Metric):
    """Fréchet distance between real and fake features of an ``extractor``.

    ``update(samples, real)`` runs the extractor; ``update_features(features, real)`` (or
    ``update(..., features=True)``) takes features directly.
    With ``reset_real=False`` real statistics survive ``reset()`` (cached real set, validation).
    ``ddof``: covariance normalisation, 1 (divide by N - 1) or 0 (by N, as StyleGAN-V).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False
    unit = "sample"

    def __init__(self, extractor: nn.Module | None, num_features: int, *,
                 reset_real: bool = True, min_samples: int = MIN_RELIABLE_CLIPS, ddof: int = 1,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.extractor, self.num_features = extractor, int(num_features)
        self.reset_real, self.min_samples, self.ddof = reset_real, min_samples, ddof
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, samples: torch.Tensor, real: bool, *, features: bool = False) -> None:
        """Add samples (run through the extractor) or, with ``features=True``, features ``[N, D]``."""
        if not features:
            if self.extractor is None:
                raise RuntimeError(f"{type(self).__name__} has no extractor; pass features=True")
            samples = self.extractor(samples)
        if samples.ndim != 2 or samples.shape[1] != self.num_features:
            raise ValueError(f"features: expected [N, {self.num_features}], got {tuple(samples.shape)}")
        f = samples.detach().to(torch.float64)
        side = "real" if real else "fake"
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(dim=0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def update_features(self, features: torch.Tensor, real: bool) -> None:
        self.update(features, real, features=True)

    def stats(self, real: bool) -> FeatureStats:
        side = "real" if real else "fake"
        return FeatureStats(int(getattr(self, f"{side}_count")), getattr(self, f"{side}_sum").cpu().clone(),
                            getattr(self, f"{side}_outer").cpu().clone())

    def set_real_stats(self, stats: FeatureStats) -> None:
        """Replace the real-side states (a cached real set); only rank 0 should pass it under DDP."""
        if stats.dim != self.num_features:
            raise ValueError(f"real statistics have dimension {stats.dim}, metric expects {self.num_features}")
        device = self.real_sum.device
        self.real_count = torch.tensor(stats.count, dtype=torch.long, device=device)
        self.real_sum = stats.total.to(device)
        self.real_outer = stats.outer.to(device)

    def compute(self) -> torch.Tensor:
        real, fake = self.stats(True), self.stats(False)
        for name, st in (("real", real), ("fake", fake)):
            if st.count < self.min_samples:
                warnings.warn(f"{type(self).__name__}: only {st.count} {name} {self.unit}s (< "
                              f"{self.min_samples}); the value is biased upwards and not comparable "
                              "with published numbers", stacklevel=2)
        return torch.tensor(frechet_distance_stats(real, fake, self.ddof), dtype=torch.float64)

    def reset(self) -> None:
        keep = None if self.reset_real else self.stats(True)
        super().reset()
        if keep is not None:
            self.set_real_stats(keep)


class FrechetVideoDistance(FeatureFrechetMetric):
    """FVD over uint8 videos ``[B, T, 3, H, W]`` with an I3D extractor (400 features)."""

    unit = "clip"

    def __init__(self, extractor: nn.Module | None, num_features: int = 400, **kwargs) -> None:
        super().__init__(extractor, num_features, **kwargs)
