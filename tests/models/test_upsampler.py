"""Video upsampler: conditioning inputs, noise augmentation, the wrapper around the UNet,
chunk stitching, model files."""

import pytest
import torch
import torch.nn.functional as F

from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.inference import load_model
from drivesim.models.conditioning import Conditioning
from drivesim.models.model_files import save_model_file
from drivesim.models.unet import parameter_group
from drivesim.models.upsampler import (
    UPSAMPLER_KIND,
    VideoUpsampler,
    augment_lowres,
    build_upsampler,
    downsample_frames,
    upsample_input,
)
from drivesim.utils.io import DriveSimInputError

TINY = dict(scale=2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_head_channels=8,
            norm_groups=8, context_channels=8, max_frames=8, max_aug_level=20)
SCHEDULE = DiscreteVPSchedule(1000, "cosine")


def tiny(**overrides) -> VideoUpsampler:
    torch.manual_seed(0)
    return VideoUpsampler(**{**TINY, **overrides}).eval()


def perturb(net, groups, scale=0.05, seed=1):
    """Random weights in the given parameter groups (zero-initialised outputs would hide everything)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.unet.named_parameters():
            if parameter_group(name) in groups:
                p.add_(scale * torch.randn(p.shape, generator=g))


def inputs(b=2, t=4, h=16, w=32, seed=0, context=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 3, h, w, generator=g)
    lowres = torch.rand(b, t, 3, h, w, generator=g) * 2 - 1
    ctx = torch.rand(b, context, 3, h, w, generator=g) * 2 - 1 if context else None
    cond = Conditioning(lowres=lowres, regime=torch.arange(b) % 5, context=ctx,
                        context_mask=torch.ones(b, context) if context else None)
    return x, torch.full((b,), 300), cond


# -- conditioning inputs ---------------------------------------------------------------------
def test_upsample_input_bicubic_shape_and_range():
    low = torch.rand(2, 3, 3, 8, 16) * 2 - 1
    up = upsample_input(low, 4)
    assert up.shape == (2, 3, 3, 32, 64)
    assert up.min() >= -1 and up.max() <= 1
    expected = F.interpolate(low.flatten(0, 1), scale_factor=4.0, mode="bicubic").clamp(-1, 1)
    torch.testing.assert_close(up, expected.reshape(2, 3, 3, 32, 64))
    assert downsample_frames(up, 4).shape == low.shape


def test_downsample_is_area_mean_and_checks_size():
    video = torch.rand(1, 2, 3, 8, 8)
    low = downsample_frames(video, 4)
    torch.testing.assert_close(low[0, 1, 2, 1, 0], video[0, 1, 2, 4:8, 0:4].mean())
    with pytest.raises(ValueError, match="divisible"):
        downsample_frames(torch.rand(1, 1, 3, 10, 8), 4)


def test_augment_level_zero_is_identity_and_input_untouched():
    lowres = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    before = lowres.clone()
    out = augment_lowres(lowres, torch.zeros(2, dtype=torch.long), SCHEDULE, torch.Generator().manual_seed(0))
    assert torch.equal(out, lowres)
    assert torch.equal(lowres, before)


def test_augment_is_the_schedules_q_sample_per_clip():
    """level l >= 1 is timestep l - 1: out = a x + s eps with eps from the generator, one level per clip."""
    lowres = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    level = torch.tensor([250, 40])
    out = augment_lowres(lowres, level, SCHEDULE, torch.Generator().manual_seed(3))
    eps = torch.randn(lowres.shape, generator=torch.Generator().manual_seed(3))
    for i, lv in enumerate(level.tolist()):
        a, s = float(SCHEDULE.a(torch.tensor(lv - 1))), float(SCHEDULE.s(torch.tensor(lv - 1)))
        torch.testing.assert_close(out[i], a * lowres[i] + s * eps[i])
    # level 250 of the cosine schedule keeps a = 0.92 of the signal under noise of std 0.39
    residual = (out[0] - float(SCHEDULE.a(torch.tensor(249))) * lowres[0]) / float(SCHEDULE.s(torch.tensor(249)))
    assert abs(float(residual.std()) - 1.0) < 0.05
    assert float(SCHEDULE.s(torch.tensor(249))) > float(SCHEDULE.s(torch.tensor(39)))
    again = augment_lowres(lowres, level, SCHEDULE, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


def test_augment_refuses_bad_levels():
    lowres = torch.zeros(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="levels"):
        augment_lowres(lowres, torch.tensor([0, 1001]), SCHEDULE)
    with pytest.raises(ValueError, match="level"):
        augment_lowres(lowres, torch.tensor([1]), SCHEDULE)


# -- the wrapper -----------------------------------------------------------------------------
def test_unet_sees_frame_and_lowres_concatenated(monkeypatch):
    net = tiny()
    assert (net.in_channels, net.out_channels, net.unet.in_channels) == (3, 3, 6)
    seen = {}
    original = net.unet.forward

    def spy(x, t, cond):
        seen.update(x=x, cond=cond)
        return original(x, t, cond)

    monkeypatch.setattr(net.unet, "forward", spy)
    x, t, cond = inputs(context=2)
    out = net(x, t, cond)
    assert out.shape == x.shape
    assert seen["x"].shape == (2, 4, 6, 16, 32)                       # [B, T, 3 + 3, H, W]
    assert torch.equal(seen["x"][:, :, :3], x) and torch.equal(seen["x"][:, :, 3:], cond.lowres)
    ctx = seen["cond"].context
    assert ctx.shape == (2, 2, 6, 16, 32)                             # [B, S, 3 + 3, H, W]
    assert torch.equal(ctx[:, :, :3], cond.context) and torch.equal(ctx[:, :, 3:], cond.lowres[:, :2])
    assert torch.equal(seen["cond"].regime, cond.regime)


def test_pixel_unshuffle_folds_blocks_into_channels(monkeypatch):
    net = tiny(pixel_unshuffle=2)
    assert net.unet.in_channels == 24 and net.size_multiple == 4
    seen = {}
    original = net.unet.forward

    def spy(x, t, cond):
        seen["x"] = x
        return original(x, t, cond)

    monkeypatch.setattr(net.unet, "forward", spy)
    x, t, cond = inputs()
    out = net(x, t, cond)
    assert out.shape == x.shape
    both = torch.cat([x, cond.lowres], dim=2).flatten(0, 1)           # [(B T), 6, H, W]
    expected = F.pixel_unshuffle(both, 2).reshape(2, 4, 24, 8, 16)
    assert torch.equal(seen["x"], expected)
    y = torch.randn(2, 4, 3, 16, 32)
    assert torch.equal(net._unfold(net._fold(y)), y)


def test_bad_conditioning_is_refused():
    net = tiny()
    x, t, cond = inputs()
    with pytest.raises(ValueError, match="lowres"):
        net(x, t, Conditioning(regime=cond.regime))
    with pytest.raises(ValueError, match="lowres"):
        net(x, t, Conditioning(lowres=cond.lowres[:, :3], regime=cond.regime))
    with pytest.raises(ValueError, match="augmentation level"):
        net(x, t, Conditioning(lowres=cond.lowres, regime=torch.tensor([0, 21])))
    with pytest.raises(ValueError, match="augmentation level"):
        net(x, t, Conditioning(lowres=cond.lowres))
    with pytest.raises(ValueError, match="divisible"):
        net(x[..., :15, :], t, Conditioning(lowres=cond.lowres[..., :15, :], regime=cond.regime))


def test_fresh_temporal_layers_equal_per_frame_processing():
    """Temporal blocks start as the identity: a clip gives what its frames give one by one."""
    net = tiny()
    perturb(net, ("spatial",))
    x, t, cond = inputs(t=4)
    with torch.no_grad():
        clip = net(x, t, cond)
        single = torch.cat([net(x[:, i:i + 1], t, Conditioning(lowres=cond.lowres[:, i:i + 1], regime=cond.regime))
                            for i in range(4)], dim=1)
        net.image_only = True
        per_frame = net(x, t, cond)
        net.image_only = False
    assert clip.abs().mean() > 1e-3
    torch.testing.assert_close(clip, single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(clip, per_frame, atol=1e-5, rtol=1e-4)
    perturb(net, ("temporal",), seed=2)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, cond), per_frame, atol=1e-4)


def test_context_acts_only_through_the_context_path():
    net = tiny()
    perturb(net, ("spatial", "temporal"))  # context_in convs stay zero: the context path is closed
    x, t, cond = inputs(context=2)
    other = Conditioning(lowres=cond.lowres, regime=cond.regime, context=-cond.context,
                         context_mask=cond.context_mask)
    with torch.no_grad():
        assert torch.equal(net(x, t, cond), net(x, t, other))
        perturb(net, ("context",), seed=3)
        a, b = net(x, t, cond), net(x, t, other)
        assert not torch.allclose(a, b, atol=1e-4)
        net.image_only = True  # per-frame mode ignores the context
        assert torch.equal(net(x, t, cond), net(x, t, other))


def test_regime_is_the_augmentation_level_label():
    net = tiny()
    perturb(net, ("spatial", "context"))
    x, t, cond = inputs()
    other = Conditioning(lowres=cond.lowres, regime=cond.regime + 3)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, cond), net(x, t, other), atol=1e-5)
    assert net.unet.regime_embed.num_embeddings == 21


# -- model files -----------------------------------------------------------------------------
def hparams(net, **overrides):
    hp = {"network": net.config, "schedule": {"num_steps": 1000, "kind": "cosine"}, "prediction": "v",
          "aug_level": 15, "max_aug_level": 20, "fps": 8.0, "num_frames": 8, "scale": 2}
    return {**hp, **overrides}


def test_model_file_round_trip(tmp_path):
    net = tiny(pixel_unshuffle=2)
    perturb(net, ("spatial", "temporal", "context"))
    path = save_model_file(tmp_path / "up.safetensors", UPSAMPLER_KIND, hparams(net), net.state_dict())
    record = load_model(path, "upsampler")  # the one loader
    loaded, hp = record.network, record.hparams
    assert record.role == "upsampler" and load_model(path).role == "upsampler"
    assert hp["aug_level"] == 15 and loaded.config == net.config
    x, t, cond = inputs(context=2)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, cond), net(x, t, cond))


@pytest.mark.parametrize("change, field", [
    ({"aug_level": 21}, "hparams.aug_level"),
    ({"max_aug_level": 30}, "hparams.network.max_aug_level"),
    ({"scale": 4}, "hparams.network.scale"),
    ({"num_frames": 9}, "hparams.num_frames"),
    ({"prediction": "x0"}, "hparams.prediction"),
    ({"fps": -1.0}, "hparams.fps"),
    ({"schedule": {"num_steps": 20}}, "hparams.schedule.num_steps"),
    ({"schedule": {"steps": 1000}}, "hparams.schedule"),
    ({"extra": 1}, "hparams"),
    ({"network": {**TINY, "model_channels": "wide"}}, "hparams.network"),
])
def test_bad_hparams_are_refused(change, field, tmp_path):
    net = tiny()
    path = tmp_path / "up.pt"
    with pytest.raises(DriveSimInputError) as err:
        build_upsampler(hparams(net, **change), net.state_dict(), path=path)
    assert err.value.field == field and str(path) in str(err.value)


def test_mismatched_weights_and_kind_are_refused(tmp_path):
    net = tiny()
    state = dict(net.state_dict())
    state.pop(next(iter(state)))
    with pytest.raises(DriveSimInputError) as err:
        build_upsampler(hparams(net), state, path="up.pt")
    assert err.value.field == "state_dict"
    wide = tiny(model_channels=32)
    with pytest.raises(DriveSimInputError) as err:
        build_upsampler(hparams(net), wide.state_dict(), path="up.pt")
    assert err.value.field == "state_dict"
    path = save_model_file(tmp_path / "ldm.pt", "ldm", {}, net.state_dict())
    with pytest.raises(DriveSimInputError) as err:
        load_model(path, "upsampler")
    assert err.value.field == "kind"


def test_residual_diffusion_variable_round_trip():
    frames, base = torch.rand(1, 2, 3, 4, 4), torch.rand(1, 2, 3, 4, 4)
    net = tiny(residual_scale=8.0)
    x = net.to_diffusion(frames, base)
    torch.testing.assert_close(x, 8.0 * (frames - base))
    torch.testing.assert_close(net.from_diffusion(x, base), frames)
    plain = tiny()
    assert plain.to_diffusion(frames, base) is frames and plain.from_diffusion(frames, base) is frames
    with pytest.raises(ValueError, match="residual_scale"):
        tiny(residual_scale=-1.0)


def test_learned_skip_starts_at_zero_and_adds_a_timestep_gain_times_x_t():
    plain, skip = tiny(), tiny(learned_skip=True)
    perturb(plain, ("spatial",))
    skip.unet.load_state_dict(plain.unet.state_dict())
    x, t, cond = inputs()
    with torch.no_grad():
        assert torch.equal(skip(x, t, cond), plain(x, t, cond))  # zero-initialised gain
        skip.skip_gain[-1].bias.fill_(0.5)
        torch.testing.assert_close(skip(x, t, cond), plain(x, t, cond) + 0.5 * x)
        skip.skip_gain[-1].weight.normal_()
        t2 = torch.tensor([10, 900])
        gain = skip(x, t2, cond) - plain(x, t2, cond)
        assert not torch.allclose(gain[0] / x[0], gain[1] / x[1])  # the gain depends on t
    assert VideoUpsampler(**skip.config).skip_gain is not None


def test_conditioning_carries_lowres_through_its_helpers():
    lowres = torch.rand(2, 3, 3, 8, 8)
    cond = Conditioning(lowres=lowres, regime=torch.tensor([1, 2]), context=torch.rand(2, 1, 3, 8, 8),
                        context_mask=torch.ones(2, 1))
    assert cond.batch_size == 2
    assert cond.to("cpu", torch.float64).lowres.dtype == torch.float64
    both = Conditioning.cat([cond, cond.with_dropped(context=True)])
    assert torch.equal(both.lowres, torch.cat([lowres, lowres]))           # never dropped
    assert torch.equal(both.context_mask[2:], torch.zeros(2, 1))
    with pytest.raises(ValueError, match="lowres"):
        Conditioning(lowres=torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="lowres"):
        Conditioning(lowres=torch.zeros(2, 1, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="batch sizes"):
        Conditioning(lowres=lowres, regime=torch.tensor([1]))
    with pytest.raises(ValueError, match="some items only"):
        Conditioning.cat([cond, Conditioning(regime=torch.tensor([1, 2]))])


