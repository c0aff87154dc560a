"""Ego-motion conditioning: identity at init, per-frame injection, the learned null for unknown or
dropped motion, parameter group, weight transfer, models without it ignore it, validation."""

from dataclasses import replace

import pytest
import torch

from drivesim.models.conditioning import Conditioning
from drivesim.models.ego_embedding import EgoEncoder, ego_inputs
from drivesim.models.unet import PARAMETER_GROUPS, UNet, VideoUNet, parameter_group

TINY = dict(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(2,), num_head_channels=8, norm_groups=8,
            token_dim=16, max_boxes=4, box_fourier_freqs=4)
VIDEO = dict(max_frames=6, use_context=True, context_channels=8)


def perturb_(model: torch.nn.Module, generator: torch.Generator, groups=PARAMETER_GROUPS) -> torch.nn.Module:
    """A trained network: every parameter of ``groups`` moved off its init (zero ones included)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if parameter_group(name) in groups:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))
    return model.eval()


def ego(b=2, t=4, seed=0, **kw) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(daynight=torch.tensor([0, 1][:b]), ego_speed=torch.rand(b, t, generator=g) * 20,
                        ego_yaw_rate=(torch.rand(b, t, generator=g) - 0.5) * 0.4, **kw)


def inputs(generator, t=4):
    return torch.randn(2, t, 4, 8, 8, generator=generator), torch.tensor([30.0, 700.0])


def test_video_unet_with_ego_equals_the_image_unet_at_init(generator):
    """Identity at init: a video UNet built with the ego encoder from a trained image UNet gives
    the image UNet's output whatever the ego motion (known, unknown, dropped)."""
    image = perturb_(UNet(**TINY), generator)
    video = VideoUNet.from_image_unet(image, **VIDEO, use_ego=True).eval()
    x, t = inputs(generator)
    with torch.no_grad():
        ref = image(x, t, ego())
        for cond in (ego(), ego(ego_known=torch.rand(2, 4, generator=generator) < 0.5),
                     ego(drop_ego=torch.tensor([True, False]))):
            torch.testing.assert_close(video(x, t, cond), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(video(x, t, None), image(x, t, None), atol=1e-5, rtol=1e-5)


def test_ego_enters_each_frame_and_the_null_covers_unknown_and_dropped(generator):
    """Image UNet (frames independent): changing frame 2's motion changes frame 2 only; an
    unknown frame equals a dropped sample equals no ego given; the null is not speed 0."""
    model = perturb_(UNet(**TINY, use_ego=True), generator)
    x, t = inputs(generator)
    base = ego()
    moved = replace(base, ego_speed=base.ego_speed.clone().index_fill_(1, torch.tensor([2]), 33.0))
    with torch.no_grad():
        a, b = model(x, t, base), model(x, t, moved)
        diff = (a - b).abs().amax(dim=(0, 2, 3, 4))  # per frame
        assert diff[2] > 1e-3 and torch.all(diff[[0, 1, 3]] == 0)
        unknown = model(x, t, replace(base, ego_known=torch.zeros(2, 4, dtype=torch.bool)))
        torch.testing.assert_close(unknown, model(x, t, base.with_dropped(ego=True)))
        torch.testing.assert_close(unknown, model(x, t, Conditioning(daynight=base.daynight)))
        still = replace(base, ego_speed=torch.zeros(2, 4), ego_yaw_rate=torch.zeros(2, 4))
        assert (model(x, t, still) - unknown).abs().max() > 1e-3
        half = replace(base, drop_ego=torch.tensor([True, False]))
        out = model(x, t, half)
        torch.testing.assert_close(out[0], unknown[0])
        torch.testing.assert_close(out[1], a[1])


def test_models_without_ego_ignore_it(generator):
    """An old model file (no use_ego) takes conditioning with ego fields and ignores them."""
    model = perturb_(UNet(**TINY, temporal=True, **VIDEO), generator)
    assert model.ego_encoder is None and "use_ego" in model.config
    x, t = inputs(generator)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ego()), model(x, t, Conditioning(daynight=torch.tensor([0, 1]))))


def test_ego_parameters_are_their_own_group_and_transfer_from_an_image_model(generator):
    video = UNet(**TINY, temporal=True, **VIDEO, use_ego=True)
    groups = video.parameter_groups()
    assert {id(p) for p in groups["ego"]} == {id(p) for p in video.ego_encoder.parameters()}
    assert sum(len(v) for v in groups.values()) == len(list(video.parameters()))
    assert parameter_group("ego_encoder.null") == "ego"
    image = perturb_(UNet(**TINY, use_ego=True), generator)  # an image model that learned ego
    from_image = VideoUNet.from_image_unet(image, **VIDEO)
    torch.testing.assert_close(from_image.ego_encoder.null, image.ego_encoder.null)
    fresh = VideoUNet.from_image_unet(perturb_(UNet(**TINY), generator), **VIDEO, use_ego=True)
    assert torch.all(fresh.ego_encoder.null == 0) and torch.all(fresh.ego_encoder.to_emb.weight == 0)
    with pytest.raises(ValueError, match="unexpected.*ego_encoder"):
        VideoUNet.from_image_unet(image, **VIDEO, use_ego=False)


def test_ego_inputs_scale_mask_and_check_frames():
    cond = ego(ego_known=torch.tensor([[True, False, True, True]] * 2), drop_ego=torch.tensor([False, True]))
    values, use = ego_inputs(cond, 2, 4, torch.device("cpu"))
    assert values.shape == (8, 2) and use.tolist() == [True, False, True, True] + [False] * 4
    none_values, none_use = ego_inputs(None, 2, 3, torch.device("cpu"))
    assert none_values.shape == (6, 2) and not none_use.any()
    with pytest.raises(ValueError, match="ego_speed: 4 frames, latents have 5"):
        EgoEncoder(8)(cond, 2, 5, torch.device("cpu"))


def test_conditioning_ego_fields_validate_and_combine():
    good = ego()
    with pytest.raises(ValueError, match="give both or neither"):
        Conditioning(ego_speed=good.ego_speed)
    with pytest.raises(ValueError, match=r"ego_yaw_rate: expected float \[B,T\]"):
        Conditioning(ego_speed=good.ego_speed, ego_yaw_rate=good.ego_yaw_rate[:, :3])
    with pytest.raises(ValueError, match="ego_known: expected bool"):
        replace(good, ego_known=torch.ones(2, 4))
    nan = good.ego_speed.clone()
    nan[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"ego_speed: non-finite.*\[1, 2\]"):
        replace(good, ego_speed=nan)
    known = torch.ones(2, 4, dtype=torch.bool)
    known[1, 2] = False
    replace(good, ego_speed=nan, ego_known=known)  # an unknown frame's value is not read
    with pytest.raises(ValueError, match="drop_ego: expected bool"):
        replace(good, drop_ego=torch.ones(2))
    both = Conditioning.cat([good, good.with_dropped(ego=torch.tensor([False, True]))])
    assert both.drop_ego.tolist() == [False, False, False, True] and both.ego_speed.shape == (4, 4)
    batch = {"daynight": good.daynight, "ego_speed": good.ego_speed, "ego_yaw_rate": good.ego_yaw_rate,
             "ego_known": known}
    built = Conditioning.from_batch(batch)
    assert built.ego_known is known and built.to("cpu", torch.float64).ego_speed.dtype == torch.float64


def test_video_unet_feeds_ego_motion_to_the_temporal_blocks(generator):
    """With the time-embedding path silenced, the motion still reaches a video UNet's output through
    the context features of its temporal 3D-conv blocks (and not with the temporal layers off)."""
    model = perturb_(UNet(**TINY, temporal=True, **VIDEO, use_ego=True), generator)
    with torch.no_grad():
        model.ego_encoder.to_emb.weight.zero_()
        model.ego_encoder.to_emb.bias.zero_()
    assert model.ego_encoder.to_context.out_features == VIDEO["context_channels"]
    x, t = inputs(generator)
    base = ego()
    moved = replace(base, ego_speed=base.ego_speed + 10.0)
    with torch.no_grad():
        assert (model(x, t, base) - model(x, t, moved)).abs().max() > 1e-3
        model.image_only = True
        torch.testing.assert_close(model(x, t, base), model(x, t, moved))
    assert UNet(**TINY, use_ego=True).ego_encoder.to_context is None  # no context pathway: time embedding only
