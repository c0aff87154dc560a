import pytest
import torch
from metric_standins import load_standin, save_standin
from torchmetrics.image.fid import FrechetInceptionDistance

from drivesim.metrics.extractors import (
    PUBLISHED_WEIGHTS,
    I3DFeatures,
    InceptionFeatures,
    MissingWeightsError,
    UnknownWeightsError,
    check_weights,
    file_sha256,
    load_detector,
    load_torchscript,
    resolve_weights,
)
from drivesim.metrics.fid import build_fid, compute_fid, fid_stats
from drivesim.metrics.frechet import FeatureStats, frechet_distance_stats
from drivesim.metrics.fvd import FrechetVideoDistance


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_standin("i3d", root / "i3d_torchscript.pt")
    save_standin("inception", root / "inception-2015-12-05.pt")
    save_standin("inception", root / "inception-narrow.pt", num_features=256)  # fast eigh
    return root


def _videos(generator, n, t=8, h=32, w=48, low=0, high=256):
    return torch.randint(low, high, (n, t, 3, h, w), generator=generator, dtype=torch.uint8)


def test_i3d_wrapper_calls_detector_with_stylegan_v_interface(weights):
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x, rescale=False, resize=False, return_features=False):
            calls.append((tuple(x.shape), x.dtype, rescale, resize, return_features))
            return torch.zeros(x.shape[0], 400)

    video = torch.zeros(2, 5, 3, 24, 40, dtype=torch.uint8)
    I3DFeatures(Spy(), "squash")(video)
    I3DFeatures(Spy(), "center_crop")(video)
    assert calls == [((2, 3, 5, 24, 40), torch.uint8, True, True, True),
                     ((2, 3, 5, 24, 24), torch.uint8, True, True, True)]
    with pytest.raises(ValueError, match="uint8"):
        I3DFeatures(Spy())(video.float())


def test_fvd_identical_zero_different_positive_and_streaming(weights, generator):
    ext = I3DFeatures(load_standin("i3d", weights / "i3d_torchscript.pt"))
    real, fake = _videos(generator, 12), _videos(generator, 12, high=128)
    metric = FrechetVideoDistance(ext, min_samples=2)
    metric.update(real, real=True)
    metric.update(real, real=False)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-6)
    metric.reset()
    for chunk in real.split(5):
        metric.update(chunk, real=True)
    metric.update(fake, real=False)
    streamed = float(metric.compute())
    batch = frechet_distance_stats(FeatureStats.empty(400).update(ext(real)), FeatureStats.empty(400).update(ext(fake)))
    # float32 features from different batch sizes differ in the last bits
    assert streamed == pytest.approx(batch, rel=1e-6) and streamed > 1.0


def test_two_rank_reduction_equals_single_process(weights, generator):
    ext = I3DFeatures(load_standin("i3d", weights / "i3d_torchscript.pt"))
    real, fake = _videos(generator, 10), _videos(generator, 10, low=60)
    single = FrechetVideoDistance(ext, min_samples=2)
    single.update(real, real=True)
    single.update(fake, real=False)
    ranks = [FrechetVideoDistance(ext, min_samples=2) for _ in range(2)]
    for r, m in enumerate(ranks):
        m.update(real[r::2], real=True)
        m.update(fake[r::2], real=False)
    # what Metric._sync_dist does after all_gather: stack the per-rank states, apply the reduction
    merged = FrechetVideoDistance(ext, min_samples=2)
    for name, reduce in merged._reductions.items():
        assert reduce is not None
        setattr(merged, name, reduce(torch.stack([getattr(m, name) for m in ranks])))
    merged._update_count = 1  # states were set by the simulated sync, not by update()
    assert int(merged.real_count) == 10
    assert float(merged.compute()) == pytest.approx(float(single.compute()), rel=1e-9)


def test_cached_real_stats_survive_reset_and_small_sample_warning(weights, generator):
    ext = I3DFeatures(load_standin("i3d", weights / "i3d_torchscript.pt"))
    real, fake = _videos(generator, 6), _videos(generator, 6, high=100)
    reference = FrechetVideoDistance(ext)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    metric = FrechetVideoDistance(ext, reset_real=False)
    metric.set_real_stats(reference.stats(True))
    metric.update(_videos(generator, 3), real=False)
    metric.reset()
    metric.update(fake, real=False)
    with pytest.warns(UserWarning, match="only 6 (real|fake) clips"):
        assert float(metric.compute()) == pytest.approx(float(reference.compute()), rel=1e-9)


def test_fid_through_torchmetrics_matches_its_own_compute(weights, generator):
    assert InceptionFeatures(load_standin("inception", weights / "inception-2015-12-05.pt")).num_features == 2048
    ext = InceptionFeatures(load_standin("inception", weights / "inception-narrow.pt"))
    assert ext.num_features == 256
    fid = build_fid(ext)
    assert isinstance(fid, FrechetInceptionDistance)
    real = torch.randint(0, 256, (40, 3, 32, 48), generator=generator, dtype=torch.uint8)
    fake = torch.randint(0, 150, (40, 3, 32, 48), generator=generator, dtype=torch.uint8)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = compute_fid(fid, min_frames=2)
    assert fid_stats(fid, True).count == 40
    assert ours == pytest.approx(float(fid.compute()), rel=1e-3)
    assert ours > 0.1


def test_missing_weights_errors_name_file_place_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv("DRIVESIM_I3D", raising=False)
    with pytest.raises(MissingWeightsError) as err:
        resolve_weights("i3d", None)
    text = str(err.value)
    assert "i3d_torchscript.pt" in text and "DRIVESIM_I3D" in text and "--i3d" in text
    assert "stylegan-v" in text.lower()
    with pytest.raises(MissingWeightsError, match="inception-2015-12-05.pt"):
        resolve_weights("inception", tmp_path / "nope.pt")
    monkeypatch.setenv("DRIVESIM_I3D", str(tmp_path / "env.pt"))
    with pytest.raises(MissingWeightsError, match="env.pt"):
        resolve_weights("i3d", None)
    state_dict = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    state_dict.write_bytes(b"\x80\x04not a zip")
    with pytest.raises(MissingWeightsError, match="state-dict"):
        load_torchscript("inception", state_dict)


def test_weights_recognised_by_sha256(weights):
    path = weights / "i3d_torchscript.pt"
    digest = file_sha256(path)
    # a TorchScript file with the right call signature but an unknown hash is refused ...
    with pytest.raises(UnknownWeightsError) as err:
        load_torchscript("i3d", path)
    assert digest in str(err.value) and "--allow-unknown-weights" in str(err.value)
    # ... unless allowed, and then it is recorded as not the published file
    module, info = load_detector("i3d", path, allow_unknown=True)
    assert isinstance(module, torch.jit.ScriptModule)
    assert info.to_dict() == {"file": str(path), "sha256": digest, "published": False, "published_name": None}
    # a file whose hash is in the table is recognised (here a fixture registers its own hash)
    known = check_weights("i3d", path, known={digest: "fixture i3d"})
    assert known.published and known.published_name == "fixture i3d"
    # the two published detector files are what the default table holds
    assert set(PUBLISHED_WEIGHTS) == {"i3d", "inception"}
    for table in PUBLISHED_WEIGHTS.values():
        assert len(table) == 1 and all(len(h) == 64 and int(h, 16) >= 0 for h in table)
    with pytest.raises(UnknownWeightsError):
        check_weights("inception", weights / "inception-2015-12-05.pt")


def test_fvd_real_vs_other_set_scores_above_real_vs_itself(weights, generator):
    """A real bug (swapped sides, a constant feature, a lost mean term) would make a different
    set score no worse than the same set; the clamp alone guarantees only >= 0."""
    ext = I3DFeatures(load_standin("i3d", weights / "i3d_torchscript.pt"))
    real = _videos(generator, 24)
    real_again = real[torch.randperm(24, generator=generator)]   # the same clips in another order
    other = _videos(generator, 24, low=40, high=200)              # a different distribution

    def fvd(fake):
        m = FrechetVideoDistance(ext, min_samples=2)
        m.update(real, real=True)
        m.update(fake, real=False)
        return float(m.compute())

    same, different = fvd(real_again), fvd(other)
    assert same == pytest.approx(0.0, abs=1e-6)
    assert different > 100 * max(same, 1e-6)
    # StyleGAN-V's normalisation (divide by N) gives a slightly smaller distance, never a different sign
    m = FrechetVideoDistance(ext, min_samples=2, ddof=0)
    m.update(real, real=True)
    m.update(other, real=False)
    assert 0 < float(m.compute()) < different
