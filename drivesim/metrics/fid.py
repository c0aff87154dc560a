"""FID through torchmetrics' ``FrechetInceptionDistance`` with a user-supplied Inception.

torchmetrics accumulates the same float64 moments as ``FeatureStats`` (``*_features_sum``,
``*_features_cov_sum``, ``*_features_num_samples``, reduced with ``sum`` across ranks); the
reported value is computed from them with ``frechet.frechet_distance`` (symmetric-form matrix
square root) so FID and FVD share one numerically careful implementation.
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from drivesim.metrics.extractors import InceptionFeatures
from drivesim.metrics.frechet import FeatureStats, frechet_distance_stats

MIN_RELIABLE_FRAMES = 2048  # FID's bias grows quickly below a few thousand frames


def build_fid(extractor: InceptionFeatures, *, reset_real: bool = True) -> FrechetInceptionDistance:
    """torchmetrics FID on uint8 ``[B, 3, H, W]`` frames (``update(frames, real=...)``)."""
    return FrechetInceptionDistance(feature=extractor, reset_real_features=reset_real,
                                    normalize=False)


def fid_stats(metric: FrechetInceptionDistance, real: bool) -> FeatureStats:
    side = "real" if real else "fake"
    return FeatureStats(int(getattr(metric, f"{side}_features_num_samples")),
                        getattr(metric, f"{side}_features_sum").detach().cpu().double().clone(),
                        getattr(metric, f"{side}_features_cov_sum").detach().cpu().double().clone())


def set_fid_real_stats(metric: FrechetInceptionDistance, stats: FeatureStats) -> None:
    device = metric.real_features_sum.device
    metric.real_features_num_samples = torch.tensor(stats.count, dtype=torch.long, device=device)
    metric.real_features_sum = stats.total.to(device)
    metric.real_features_cov_sum = stats.outer.to(device)


def compute_fid(metric: FrechetInceptionDistance, min_frames: int = MIN_RELIABLE_FRAMES, ddof: int = 1) -> float:
    real, fake = fid_stats(metric, True), fid_stats(metric, False)
    for name, st in (("real", real), ("fake", fake)):
        if st.count < min_frames:
            warnings.warn(f"FID: only {st.count} {name} frames (< {min_frames}); the value is biased "
                          "upwards and not comparable with published numbers", stacklevel=2)
    return frechet_distance_stats(real, fake, ddof)
