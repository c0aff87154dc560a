import numpy as np
import pytest
import scipy.linalg
import torch

from drivesim.metrics.frechet import (
    FeatureStats,
    frechet_distance,
    frechet_distance_stats,
    sqrtm_psd,
)
from drivesim.utils.io import DriveSimInputError


def _scipy_frechet(mu1, s1, mu2, s2):
    """The reference formula of pytorch-fid / TTUR (scipy.linalg.sqrtm of S1 S2)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_gaussian(rng, dim, n):
    a = rng.standard_normal((dim, dim))
    mean = rng.standard_normal(dim)
    return rng.standard_normal((n, dim)) @ a + mean


@pytest.mark.parametrize("dim,n", [(4, 50), (16, 200), (32, 20)])  # last: singular covariance
def test_matches_scipy_reference(dim, n):
    rng = np.random.default_rng(dim)
    x, y = _random_gaussian(rng, dim, n), _random_gaussian(rng, dim, n) * 0.7 + 1.0
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    ours = frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    ref = _scipy_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_identical_sets_give_zero_and_shift_gives_squared_shift():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(_random_gaussian(rng, 8, 100))
    stats = FeatureStats.empty(8).update(x)
    assert frechet_distance_stats(stats, stats) == pytest.approx(0.0, abs=1e-9)
    shift = torch.arange(8, dtype=torch.float64) * 0.5
    shifted = FeatureStats.empty(8).update(x + shift)
    assert frechet_distance_stats(stats, shifted) == pytest.approx(float(shift.square().sum()), rel=1e-9)


def test_closed_form_scaled_identity_covariances():
    # N(0, a I) vs N(0, b I): d^2 = D (sqrt(a) - sqrt(b))^2
    d, a, b = 5, 4.0, 1.0
    value = frechet_distance(torch.zeros(d), a * torch.eye(d), torch.zeros(d), b * torch.eye(d))
    assert value == pytest.approx(d * (a**0.5 - b**0.5) ** 2)


def test_sqrtm_psd_squares_back():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((6, 3)))
    m = a @ a.T  # rank 3, PSD
    r = sqrtm_psd(m)
    torch.testing.assert_close(r @ r, m, atol=1e-10, rtol=1e-8)
    assert not torch.isnan(r).any()


def test_streaming_equals_batch_and_merge(tmp_path):
    rng = np.random.default_rng(2)
    x = torch.from_numpy(_random_gaussian(rng, 6, 90))
    batch = FeatureStats.empty(6).update(x)
    streamed = FeatureStats.empty(6)
    for chunk in x.split(7):
        streamed.update(chunk)
    merged = FeatureStats.empty(6).update(x[:40]).merge(FeatureStats.empty(6).update(x[40:]))
    for st in (streamed, merged):
        assert st.count == 90
        torch.testing.assert_close(st.mean(), x.mean(0))
        torch.testing.assert_close(st.cov(), torch.from_numpy(np.cov(x.numpy(), rowvar=False)))
        torch.testing.assert_close(st.cov(), batch.cov())
    path = tmp_path / "stats.npz"
    batch.save(path)
    loaded = FeatureStats.load(path)
    assert loaded.count == 90 and torch.equal(loaded.outer, batch.outer)
    with pytest.raises(FileExistsError):
        batch.save(path)


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.empty(3).update(torch.zeros(1, 3)).cov()
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        FeatureStats.empty(3).update(torch.zeros(4, 2))
    with pytest.raises(DriveSimInputError):
        FeatureStats.load(__file__)
