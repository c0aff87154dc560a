"""The one sampling call: wiring of guidance, context re-imposition, sampler table and noise."""

import pytest
import torch

from drivesim.diffusion.guidance import guided_denoiser
from drivesim.diffusion.masks import with_context
from drivesim.diffusion.samplers import SAMPLERS, ddim_sample
from drivesim.diffusion.schedule import DiscreteVPSchedule
from drivesim.inference import diffusion_record, guidance_scales, sample
from drivesim.models.conditioning import Conditioning
from drivesim.models.unet import UNet

UNET = dict(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_head_channels=8, norm_groups=8, token_dim=16, max_boxes=4,
            box_fourier_freqs=2, temporal=True, max_frames=6, use_context=True, context_channels=8)


@pytest.fixture(scope="module")
def record():
    torch.manual_seed(0)
    unet = UNet(**UNET)
    with torch.no_grad():  # temporal layers start at zero: perturb so the context matters
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return diffusion_record(unet.eval(), DiscreteVPSchedule(num_steps=1000), "v")


def cond_with_context(b=2, given=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Conditioning(boxes=torch.rand(b, 5, 3, 4, generator=g).sort(dim=-1).values,
                        box_classes=torch.ones(b, 5, 3, dtype=torch.long), box_ids=torch.ones(b, 5, 3, dtype=torch.long),
                        daynight=torch.tensor([0, 1][:b]), crowd=torch.tensor([1, 2][:b]),
                        context=torch.randn(b, given, 4, 8, 8, generator=g), context_mask=torch.ones(b, given))


def test_context_reimposed_and_seeded(record):
    cond = cond_with_context()
    w = torch.tensor([2.0, 2.0, 2.0, 1.5, 1.0])
    scales = guidance_scales(cond, context=w, labels=1.5, boxes=2.0)
    a = sample(record, cond, 5, (8, 8), steps=3, scales=scales, generator=torch.Generator().manual_seed(0))
    b = sample(record, cond, 5, (8, 8), steps=3, scales=scales, generator=torch.Generator().manual_seed(0))
    c = sample(record, cond, 5, (8, 8), steps=3, scales=scales, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 5, 4, 8, 8) and torch.equal(a, b)
    torch.testing.assert_close(a[:, :2], cond.context, rtol=0, atol=0)  # the given frames exactly
    assert not torch.allclose(a[:, 2:], c[:, 2:])


def test_sample_is_the_documented_composition(record):
    """sample() == guided_denoiser + with_context(padded context) + the sampler, noise from the generator."""
    cond = cond_with_context()
    scales = {"context": 1.5, "boxes": 2.0}
    out = sample(record, cond, 5, (8, 8), steps=4, scales=scales, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 5, 4, 8, 8, generator=gen)
    ctx = torch.zeros(2, 5, 4, 8, 8)
    ctx[:, :2] = cond.context
    mask = torch.zeros(2, 5)
    mask[:, :2] = 1
    denoise = with_context(guided_denoiser(record.denoiser(), cond, scales), ctx, mask)
    # float rounding only (the call moves the conditioning to the device): a mis-wiring differs by O(1)
    torch.testing.assert_close(out, ddim_sample(denoise, x_T, record.schedule, 4, generator=gen), rtol=1e-4, atol=1e-5)


def test_scale_one_is_one_forward_pass(record):
    cond = cond_with_context()
    assert guidance_scales(cond, context=1.0, labels=1.0, boxes=1.0) == {}
    assert set(guidance_scales(cond, context=torch.ones(5))) == {"context"}  # per-frame scales are kept
    no_ctx = Conditioning(daynight=torch.tensor([0]), crowd=torch.tensor([1]))
    assert guidance_scales(no_ctx, context=2.0, labels=3.0, boxes=2.0) == {"labels": 3.0}


def test_bad_calls(record):
    cond = cond_with_context()
    with pytest.raises(ValueError, match="sampler"):
        sample(record, cond, 5, (8, 8), steps=2, sampler="euler")
    with pytest.raises(ValueError, match="DDIM option"):
        sample(record, cond, 5, (8, 8), steps=2, sampler="dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="steps"):
        sample(record, cond, 5, (8, 8), steps=0)
    with pytest.raises(ValueError, match="context_mask"):  # the Conditioning itself refuses a mismatch
        Conditioning(daynight=cond.daynight, crowd=cond.crowd, context=cond.context, context_mask=torch.ones(2, 3))
    assert set(SAMPLERS) == {"ddim", "dpmpp_2m"}


def test_ego_scale_needs_known_ego_motion():
    """The ego branch is requested only when the scale is not 1 (or per frame) and some frame's
    motion is known: unknown everywhere, the branch would equal the conditional one."""
    dn = torch.tensor([0, 1])
    speed, yaw = torch.full((2, 5), 10.0), torch.zeros(2, 5)
    known = Conditioning(daynight=dn, ego_speed=speed, ego_yaw_rate=yaw)
    assert guidance_scales(known, ego=2.0) == {"ego": 2.0}
    assert guidance_scales(known, ego=1.0) == {}
    assert set(guidance_scales(known, ego=torch.ones(5))) == {"ego"}
    unknown = Conditioning(daynight=dn, ego_speed=speed, ego_yaw_rate=yaw, ego_known=torch.zeros(2, 5, dtype=torch.bool))
    assert guidance_scales(unknown, ego=2.0) == {}
    assert guidance_scales(Conditioning(daynight=dn), ego=2.0) == {}
