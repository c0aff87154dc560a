"""Image UNet: shapes, per-frame independence, zero-init box cross-attention, labels,
gradient checkpointing, parameter groups, paper-size config, bad input."""

import pytest
import torch

from drivesim.models.conditioning import Conditioning
from drivesim.models.unet import UNet

TINY = dict(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(1, 2), num_head_channels=8, norm_groups=8,
            token_dim=16, max_boxes=4, box_fourier_freqs=4)


def randomize_(model, generator, skip=()):
    """Perturb every parameter (zero-init layers included) except names containing ``skip``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not any(s in name for s in skip):
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model


def box_cond(generator, b=2, t=2, n=3):
    c = torch.rand(b, t, n, 2, 2, generator=generator).sort(dim=-2).values
    boxes = torch.stack([c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]], dim=-1)
    return Conditioning(boxes=boxes, box_classes=torch.randint(1, 7, (b, t, n), generator=generator),
                        daynight=torch.tensor([0, 1])[:b], crowd=torch.tensor([1, 2])[:b])


def inputs(generator, b=2, t=2):
    return torch.randn(b, t, 4, 8, 8, generator=generator), torch.tensor([3.0, 700.5])[:b]


def test_shapes_and_frames_independent(generator):
    torch.manual_seed(0)
    model = randomize_(UNet(**{**TINY, "out_channels": 8}), generator).eval()
    x, t = inputs(generator, t=3)
    cond = box_cond(generator, t=3)
    out = model(x, t, cond)
    assert out.shape == (2, 3, 8, 8, 8)
    # the image model treats frames independently: frame 1 alone gives the same output
    one = Conditioning(boxes=cond.boxes[:, 1:2], box_classes=cond.box_classes[:, 1:2],
                       daynight=cond.daynight, crowd=cond.crowd)
    torch.testing.assert_close(model(x[:, 1:2], t, one)[:, 0], out[:, 1], atol=1e-5, rtol=1e-5)
    assert model(x, t, None).shape == (2, 3, 8, 8, 8)


def test_box_cross_attention_zero_init_then_learns(generator):
    torch.manual_seed(0)
    model = randomize_(UNet(**TINY), generator, skip=("attn_cross.to_out",))
    x, t = inputs(generator)
    a, b = box_cond(generator), box_cond(generator)
    b = Conditioning(boxes=b.boxes, box_classes=b.box_classes, daynight=a.daynight, crowd=a.crowd)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, a), model(x, t, b), atol=0, rtol=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(x, t, a) - torch.randn(x.shape, generator=generator)).pow(2).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        assert (model(x, t, a) - model(x, t, b)).abs().max() > 1e-6


def test_boxes_of_frame_condition_that_frame_only(generator):
    torch.manual_seed(0)
    model = randomize_(UNet(**TINY), generator).eval()
    x, t = inputs(generator, t=3)
    cond = box_cond(generator, t=3)
    boxes = cond.boxes.clone()
    boxes[:, 1] = box_cond(generator, t=1).boxes[:, 0]  # new boxes on frame 1 only
    other = Conditioning(boxes=boxes, box_classes=cond.box_classes, daynight=cond.daynight,
                         crowd=cond.crowd)
    with torch.no_grad():
        diff = (model(x, t, cond) - model(x, t, other)).abs().amax(dim=(0, 2, 3, 4))
    assert diff[1] > 1e-5 and diff[0] == 0 and diff[2] == 0


def test_labels_and_label_dropout(generator):
    torch.manual_seed(0)
    model = randomize_(UNet(**TINY), generator).eval()
    x, t = inputs(generator)
    day = Conditioning(daynight=torch.tensor([0, 0]), crowd=torch.tensor([1, 1]))
    night = Conditioning(daynight=torch.tensor([1, 1]), crowd=torch.tensor([1, 1]))
    with torch.no_grad():
        assert (model(x, t, day) - model(x, t, night)).abs().max() > 1e-5
        dropped_day = model(x, t, day.with_dropped(labels=True))
        torch.testing.assert_close(dropped_day, model(x, t, night.with_dropped(labels=True)))
        torch.testing.assert_close(dropped_day, model(x, t, None))


def test_gradient_checkpointing_same_grads(generator):
    torch.manual_seed(0)
    plain = randomize_(UNet(**TINY), generator)
    ckpt = UNet(**{**TINY, "use_checkpoint": True})
    ckpt.load_state_dict(plain.state_dict())
    x, t = inputs(generator)
    cond = box_cond(generator)
    for m in (plain, ckpt):
        m(x, t, cond).square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_parameter_groups_partition():
    model = UNet(**TINY)
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups["temporal"] == [] and groups["context"] == []
    cond_ids = {id(p) for p in groups["conditioning"]}
    for name, p in model.named_parameters():
        if "attn_cross" in name or name.startswith(("box_encoder", "label_encoder")):
            assert id(p) in cond_ids, name
    assert len(groups["spatial"]) > 0


# paper: 224 ch, mult 1,2,2,3,4, attention at latent heights 16/8/4 of 16x32 latents
# (downsample factors 1, 2, 4), 32 channels per head
PAPER = dict(model_channels=224, channel_mult=(1, 2, 2, 3, 4), num_res_blocks=2,
             attention_resolutions=(1, 2, 4), num_head_channels=32)


def test_paper_size_config_builds():
    with torch.device("meta"):
        model = UNet(**PAPER)
    heads = sorted({m.attn1.heads for m in model.modules() if hasattr(m, "attn1")})
    assert heads == [7, 14, 28]  # 224/32, 448/32 and the 896-channel middle block
    assert 300e6 < sum(p.numel() for p in model.parameters()) < 700e6


@pytest.mark.slow
def test_paper_size_forward(generator):
    model = UNet(**PAPER).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 4, 16, 32, generator=generator), torch.tensor([500.0]))
    assert out.shape == (1, 1, 4, 16, 32)


def test_bad_input(generator):
    model = UNet(**TINY)
    x, t = inputs(generator)
    with pytest.raises(ValueError, match="3 channels, the UNet expects 4"):
        model(x[:, :, :3], t)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1])
    with pytest.raises(ValueError, match=r"\(7, 8\) must be divisible by 2"):
        model(x[..., :7, :], t)
    with pytest.raises(ValueError, match="4 frames, latents have 2"):
        model(x, t, box_cond(generator, t=4))
    ctx = Conditioning(context=x[:, :1], context_mask=torch.ones(2, 1))
    with pytest.raises(ValueError, match="use_context=False"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="need temporal=True"):
        UNet(**TINY, use_context=True)


def test_geglu_matches_reference_and_gradcheck(generator):
    from drivesim.models.unet_blocks import geglu

    x = torch.randn(3, 5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    a, gate = x.chunk(2, dim=-1)
    torch.testing.assert_close(geglu(x), a * torch.nn.functional.gelu(gate))
    assert torch.autograd.gradcheck(geglu, (x,))


def test_box_layout_input_starts_neutral_and_follows_boxes(generator):
    torch.manual_seed(0)
    plain = randomize_(UNet(**TINY), generator).eval()
    layout = UNet(**TINY, box_layout=True).eval()
    state = plain.state_dict()
    weight = layout.conv_in.weight.detach().clone()
    assert weight[:, 4:].abs().max() == 0  # layout channels zero-initialised
    weight[:, :4] = state["conv_in.weight"]
    layout.load_state_dict({**state, "conv_in.weight": weight})
    x, t = torch.randn(2, 2, 4, 8, 8, generator=generator), torch.tensor([5.0, 700.0])
    cond = box_cond(generator)
    with torch.no_grad():
        torch.testing.assert_close(layout(x, t, cond), plain(x, t, cond), rtol=0, atol=1e-6)
        layout.conv_in.weight[:, 4:].normal_(0, 0.3, generator=generator)
        other = box_cond(torch.Generator().manual_seed(99))  # boxes elsewhere, same labels
        moved = Conditioning(boxes=other.boxes, box_classes=cond.box_classes, daynight=cond.daynight,
                             crowd=cond.crowd)
        assert (layout(x, t, cond) - layout(x, t, moved)).abs().max() > 1e-3  # the layout now acts
        no_boxes = Conditioning(daynight=cond.daynight, crowd=cond.crowd)
        torch.testing.assert_close(layout(x, t, cond.with_dropped(boxes=True)), layout(x, t, no_boxes))
    with pytest.raises(ValueError, match="box_layout needs use_boxes"):
        UNet(**TINY, box_layout=True, use_boxes=False)
