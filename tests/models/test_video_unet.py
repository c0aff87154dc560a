"""Video UNet: identity at init vs the image UNet, alpha = 1 exactness, spatial weight
transfer, context path (prediction / interpolation), regimes, freezing, bad input."""

import pytest
import torch

from drivesim.diffusion.masks import context_mask_from_counts, interpolation_mask
from drivesim.models.conditioning import Conditioning
from drivesim.models.context import ContextEncoder, build_context_input, nearest_context
from drivesim.models.unet import UNet, VideoUNet, parameter_group

TINY = dict(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(2,), num_head_channels=8, norm_groups=8,
            token_dim=16, max_boxes=4, box_fourier_freqs=4)
VIDEO = dict(max_frames=6, use_context=True, context_channels=8, context_input=True)


def randomize_(model, generator, groups=("spatial", "conditioning", "temporal", "context")):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if parameter_group(name) in groups:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def cond_for(b=2, t=4, seed=0, **kw):
    """Boxes/labels from a fixed seed (the same for every call with that seed)."""
    generator = torch.Generator().manual_seed(seed)
    c = torch.rand(b, t, 3, 2, 2, generator=generator).sort(dim=-2).values
    boxes = torch.stack([c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]], dim=-1)
    return Conditioning(boxes=boxes, box_classes=torch.randint(1, 7, (b, t, 3), generator=generator),
                        daynight=torch.tensor([0, 1]), crowd=torch.tensor([2, 0]), **kw)


def pair(generator):
    """A randomised image UNet and the video UNet built from it (temporal layers fresh)."""
    torch.manual_seed(0)
    image = randomize_(UNet(**TINY), generator).eval()
    return image, VideoUNet.from_image_unet(image, **VIDEO).eval()


def data(generator, t=4):
    return torch.randn(2, t, 4, 8, 8, generator=generator), torch.tensor([12.0, 950.0])


def test_identity_at_init_equals_image_unet(generator):
    image, video = pair(generator)
    x, t = data(generator)
    ctx = x[:, :2] + 1.0
    cond = cond_for(context=ctx, context_mask=torch.ones(2, 2))
    with torch.no_grad():
        ref = image(x, t, cond_for())
        torch.testing.assert_close(video(x, t, cond_for()), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(video(x, t, cond), ref, atol=1e-5, rtol=1e-5)  # with context
    assert video(x, t, cond).shape == x.shape


def test_alpha_one_reproduces_image_unet_exactly(generator):
    image, video = pair(generator)
    randomize_(video, generator, groups=("temporal", "context"))
    x, t = data(generator)
    cond = cond_for()
    with torch.no_grad():
        ref = image(x, t, cond)
        assert (video(x, t, cond) - ref).abs().max() > 1e-4  # temporal layers now act
        video.image_only = True
        assert torch.equal(video(x, t, cond), ref)
        ctx = torch.randn(x.shape, generator=generator)  # alpha = 1 ignores context frames too
        assert torch.equal(video(x, t, cond_for(context=ctx, context_mask=torch.ones(2, 4))), ref)
        video.image_only = False
        for name, p in video.named_parameters():
            if name.endswith("blend.mix"):
                p.fill_(100.0)  # sigmoid(100) == 1.0 in float32
        assert torch.equal(video(x, t, cond), ref)


def test_temporal_layers_mix_frames_after_training(generator):
    _, video = pair(generator)
    randomize_(video, generator, groups=("temporal",))
    x, t = data(generator)
    cond = cond_for()
    x2 = x.clone()
    x2[:, 0] += torch.randn(x[:, 0].shape, generator=generator)
    with torch.no_grad():
        diff = (video(x2, t, cond) - video(x, t, cond)).abs().amax(dim=(0, 2, 3, 4))
    assert diff[1:].min() > 1e-5  # frame 0 reaches every later frame


def test_context_path(generator):
    _, video = pair(generator)
    randomize_(video, generator, groups=("temporal", "context"))
    x, t = data(generator)
    ctx = torch.randn(2, 2, 4, 8, 8, generator=generator)
    with_ctx = cond_for(context=ctx, context_mask=torch.ones(2, 2))
    zero_mask = cond_for(context=ctx, context_mask=torch.zeros(2, 2))
    with torch.no_grad():
        a = video(x, t, with_ctx)
        assert (a - video(x, t, cond_for())).abs().max() > 1e-5
        # S = 0: an all-zero mask is exactly the no-context (unconditional) branch
        torch.testing.assert_close(video(x, t, zero_mask), video(x, t, cond_for()),
                                   atol=0, rtol=0)
        dropped = with_ctx.with_dropped(context=torch.tensor([True, False]))
        out = video(x, t, dropped)
        torch.testing.assert_close(out[1], a[1], atol=1e-5, rtol=1e-5)
        assert (out[0] - a[0]).abs().max() > 1e-5


def test_nearest_context_gives_each_frame_the_latent_it_continues_from(generator):
    z = torch.randn(2, 5, 4, 3, 3, generator=generator)
    pred = build_context_input(cond_for(b=2, t=5, context=z[:, :2], context_mask=torch.ones(2, 2)), z)
    near = nearest_context(pred)
    assert near.shape == pred.shape
    torch.testing.assert_close(near[:, 0], pred[:, 0])                    # a context frame: itself
    for t in (1, 2, 3, 4):                                                # later frames: the last one
        torch.testing.assert_close(near[:, t], pred[:, 1])
    inter = build_context_input(cond_for(b=2, t=5, context=z, context_mask=interpolation_mask(2, 5)), z)
    near = nearest_context(inter)
    for t, k in ((0, 0), (1, 0), (2, 0), (3, 4), (4, 4)):                # ties go to the earlier key
        torch.testing.assert_close(near[:, t], inter[:, k])
    assert torch.equal(nearest_context(torch.zeros(2, 5, 5, 3, 3)), torch.zeros(2, 5, 5, 3, 3))  # S = 0
    with pytest.raises(ValueError, match="context_input needs use_context"):
        UNet(**TINY, temporal=True, context_input=True)


def test_context_input_reaches_every_frame_and_is_a_context_parameter(generator):
    _, video = pair(generator)
    assert parameter_group("context_input.weight") == "context"
    with torch.no_grad():
        video.context_input.weight.normal_(0, 0.1, generator=generator)
    x, t = data(generator)
    base = cond_for(context=x[:, :1], context_mask=torch.ones(2, 1))
    moved = cond_for(context=x[:, :1] + 1.0, context_mask=torch.ones(2, 1))
    video.context_encoder.requires_grad_(False)
    with torch.no_grad():  # the temporal-block pathway is still zero-initialised: the effect is the input path
        diff = (video(x, t, moved) - video(x, t, base)).abs().amax(dim=(0, 2, 3, 4))
    assert (diff > 1e-5).all()


def test_build_context_input_and_encoder(generator):
    x, _ = data(generator, t=5)
    ctx = torch.randn(2, 3, 4, 8, 8, generator=generator)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    c_s = build_context_input(Conditioning(context=ctx, context_mask=mask), x)
    assert c_s.shape == (2, 5, 5, 8, 8)
    torch.testing.assert_close(c_s[0, :2, :4], ctx[0, :2])
    assert c_s[0, 2:].abs().max() == 0 and c_s[1, 1:].abs().max() == 0
    torch.testing.assert_close(c_s[:, :, 4, 0, 0], torch.cat([mask, torch.zeros(2, 2)], 1))
    assert torch.equal(build_context_input(None, x), torch.zeros(2, 5, 5, 8, 8))
    feats = ContextEncoder(4, channels=6, num_levels=3)(c_s)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        (8, 8): (10, 6, 8, 8), (4, 4): (10, 6, 4, 4), (2, 2): (10, 6, 2, 2)}
    assert context_mask_from_counts(torch.tensor([0, 2]), 4).tolist() == [[0, 0, 0, 0], [1, 1, 0, 0]]
    assert interpolation_mask(1, 5).tolist() == [[1, 0, 0, 0, 1]]
    with pytest.raises(ValueError, match="counts"):
        context_mask_from_counts(torch.tensor([5, 5]), 4)
    with pytest.raises(ValueError, match="key frames"):
        interpolation_mask(1, 5, (0, 5))


def test_interpolation_regime(generator):
    torch.manual_seed(0)
    image = randomize_(UNet(**TINY), generator).eval()
    interp = UNet.from_image_unet(image, **VIDEO, num_regimes=2).eval()
    x, t = data(generator, t=5)
    key = x.clone()
    cond = lambda r: Conditioning(context=key, context_mask=interpolation_mask(2, 5),  # noqa: E731
                                  regime=torch.tensor([r, r]))
    with torch.no_grad():
        torch.testing.assert_close(interp(x, t, cond(0)), image(x, t, None), atol=1e-5, rtol=1e-5)
        randomize_(interp, generator, groups=("context",))
        assert (interp(x, t, cond(0)) - interp(x, t, cond(1))).abs().max() > 1e-5
    with pytest.raises(ValueError, match="needs cond.regime"):
        interp(x, t, None)


def test_frozen_spatial_gets_no_grad_and_checkpointing(generator):
    _, video = pair(generator)
    randomize_(video, generator, groups=("temporal", "context"))
    ckpt = UNet(**{**video.config, "use_checkpoint": True})
    ckpt.load_state_dict(video.state_dict())
    x, t = data(generator)
    cond = cond_for(context=x[:, :1], context_mask=torch.ones(2, 1))
    for model in (video.train(), ckpt.train()):
        groups = model.parameter_groups()
        for p in groups["spatial"] + groups["conditioning"]:
            p.requires_grad_(False)
        model(x, t, cond).square().mean().backward()
        assert all(p.grad is None for p in groups["spatial"] + groups["conditioning"])
        assert all(p.grad is not None for p in groups["temporal"] + groups["context"])
    for (name, p), q in zip(video.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_parameter_groups_video():
    model = UNet(**TINY, **VIDEO, temporal=True, num_regimes=2)
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".temporal." in names[id(p)] or ".blend." in names[id(p)] for p in groups["temporal"])
    assert any("context_in" in names[id(p)] for p in groups["context"])
    assert any(names[id(p)].startswith("regime_embed") for p in groups["context"])


def test_weight_transfer_errors(generator):
    image, video = pair(generator)
    with pytest.raises(ValueError, match="already has temporal layers"):
        UNet.from_image_unet(video)
    with pytest.raises(ValueError, match="is a video model"):
        UNet(**TINY).load_spatial_state_dict(video.state_dict())
    with pytest.raises(ValueError, match="shape mismatches"):
        UNet(**{**TINY, "model_channels": 24}, temporal=True).load_spatial_state_dict(image.state_dict())
    with pytest.raises(ValueError, match="missing"):
        UNet(**{**TINY, "num_res_blocks": 2}, temporal=True).load_spatial_state_dict(image.state_dict())


def test_video_bad_input(generator):
    _, video = pair(generator)
    x, t = data(generator, t=7)
    with pytest.raises(ValueError, match="T=7 frames exceeds max_frames=6"):
        video(x, t)
    x, t = data(generator, t=3)
    with pytest.raises(ValueError, match="4 context frames exceed the T=3"):
        video(x, t, Conditioning(context=torch.zeros(2, 4, 4, 8, 8), context_mask=torch.ones(2, 4)))
    with pytest.raises(ValueError, match=r"frame shape \(3, 8, 8\)"):
        video(x, t, Conditioning(context=torch.zeros(2, 1, 3, 8, 8), context_mask=torch.ones(2, 1)))
    with pytest.raises(ValueError, match="5 channels, the UNet expects 4"):
        video(torch.zeros(2, 3, 5, 8, 8), t)


def test_track_ids_option(generator):
    torch.manual_seed(0)
    model = UNet(**TINY, temporal=True, max_frames=4, use_track_ids=True).eval()
    randomize_(model, generator)
    x, t = data(generator)
    cond = cond_for()
    ids = torch.randint(1, 9, cond.boxes.shape[:3], generator=generator)
    with_ids = Conditioning(boxes=cond.boxes, box_classes=cond.box_classes, box_ids=ids)
    with torch.no_grad():
        assert (model(x, t, with_ids) - model(x, t, Conditioning(
            boxes=cond.boxes, box_classes=cond.box_classes, box_ids=ids + 1))).abs().max() > 1e-6
