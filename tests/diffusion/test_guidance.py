"""Multi-condition classifier-free guidance, batched into one forward pass; masks."""

import pytest
import torch

from drivesim.diffusion.guidance import guided_denoiser
from drivesim.diffusion.masks import (
    context_mask_from_counts,
    interpolation_mask,
    masked_context,
    sample_context_masks,
    sample_regimes,
)
from drivesim.models.conditioning import Conditioning

B, T = 2, 3


def make_cond(generator):
    boxes = torch.rand(B, T, 2, 4, generator=generator).sort(dim=-1).values
    return Conditioning(boxes=boxes, box_classes=torch.ones(B, T, 2, dtype=torch.long),
                        daynight=torch.tensor([0, 1]), crowd=torch.tensor([1, 2]),
                        context=torch.randn(B, T, 4, 2, 2, generator=generator),
                        context_mask=torch.tensor([[1.0, 0, 0], [1, 1, 0]]))


class CountingModel:
    """x0_hat that depends non-linearly on which conditions are present (and interactions)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, cond):
        self.calls += 1
        n = x.shape[0]
        no = torch.zeros(n, dtype=torch.bool)
        lab = (~(cond.drop_labels if cond.drop_labels is not None else no)).float() * (cond.daynight + 1)
        box = (~(cond.drop_boxes if cond.drop_boxes is not None else no)).float() * cond.boxes.sum((1, 2, 3))
        ctx = cond.context_mask.sum(1)
        per_frame = torch.arange(T, dtype=x.dtype)[None, :, None, None, None]
        level = (lab + 10 * box + 100 * ctx + lab * ctx * box)[:, None, None, None, None]
        return 0.5 * x + level * (1 + per_frame) + 0.01 * t.float()[:, None, None, None, None]


def variants(model, x, t, cond):
    none = model(x, t, cond.with_dropped(boxes=True, labels=True, context=True))
    ctx = model(x, t, cond.with_dropped(boxes=True, labels=True))
    ctx_lab = model(x, t, cond.with_dropped(boxes=True))
    full = model(x, t, cond)
    return none, ctx, ctx_lab, full


@pytest.fixture
def setup(generator):
    cond = make_cond(generator)
    x = torch.randn(B, T, 4, 2, 2, generator=generator)
    t = torch.tensor([10, 500])
    return cond, x, t


def test_scale_one_is_conditional_and_zero_is_unconditional(setup):
    cond, x, t = setup
    none, _, _, full = variants(CountingModel(), x, t, cond)
    model = CountingModel()
    ones = guided_denoiser(model, cond, {"context": 1.0, "labels": 1.0, "boxes": 1.0})(x, t)
    torch.testing.assert_close(ones, full)
    assert model.calls == 1  # every variant in ONE forward pass
    zeros = guided_denoiser(model, cond, {"context": 0.0, "labels": 0.0, "boxes": 0.0})(x, t)
    torch.testing.assert_close(zeros, none)
    assert (full - none).abs().max() > 1.0


def test_nested_composition_and_single_conditions(setup):
    cond, x, t = setup
    none, ctx, ctx_lab, full = variants(CountingModel(), x, t, cond)
    out = guided_denoiser(CountingModel(), cond, {"context": 2.0, "labels": 3.0, "boxes": 4.0})(x, t)
    torch.testing.assert_close(out, none + 2 * (ctx - none) + 3 * (ctx_lab - ctx) + 4 * (full - ctx_lab))
    # guiding boxes only: labels and context stay on in both branches
    only_boxes = guided_denoiser(CountingModel(), cond, {"boxes": 2.5})(x, t)
    torch.testing.assert_close(only_boxes, ctx_lab + 2.5 * (full - ctx_lab))
    # guiding labels only: boxes stay on; the unconditional branch drops labels alone
    model = CountingModel()
    no_lab = model(x, t, cond.with_dropped(labels=True))
    only_labels = guided_denoiser(model, cond, {"labels": 1.5})(x, t)
    torch.testing.assert_close(only_labels, no_lab + 1.5 * (full - no_lab))
    only_ctx = guided_denoiser(CountingModel(), cond, {"context": 3.0})(x, t)
    no_ctx = CountingModel()(x, t, cond.with_dropped(context=True))
    torch.testing.assert_close(only_ctx, no_ctx + 3.0 * (full - no_ctx))


def test_per_frame_scales(setup):
    cond, x, t = setup
    none, ctx, ctx_lab, full = variants(CountingModel(), x, t, cond)
    s_box = torch.tensor([0.0, 1.0, 3.0])
    model = CountingModel()
    out = guided_denoiser(model, cond, {"context": 1.0, "labels": 1.0, "boxes": s_box})(x, t)
    assert model.calls == 1
    torch.testing.assert_close(out[:, 0], ctx_lab[:, 0])
    torch.testing.assert_close(out[:, 1], full[:, 1])
    torch.testing.assert_close(out[:, 2], (ctx_lab + 3.0 * (full - ctx_lab))[:, 2])
    with pytest.raises(ValueError, match=r"tensor \[T=3\]"):
        guided_denoiser(model, cond, {"boxes": torch.ones(5)})(x, t)
    with pytest.raises(ValueError, match="unknown"):
        guided_denoiser(model, cond, {"weather": 2.0})


def test_context_masks_and_interpolation_masks():
    gen = torch.Generator().manual_seed(0)
    mask, counts = sample_context_masks(3000, 8, (0.2, 0.3, 0.5), gen)
    assert mask.shape == (3000, 8)
    freq = torch.bincount(counts, minlength=3).float() / 3000
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.03, rtol=0)
    torch.testing.assert_close(mask.sum(1), counts.float())
    assert torch.equal(context_mask_from_counts(torch.tensor([0, 2]), 4),
                       torch.tensor([[0.0, 0, 0, 0], [1, 1, 0, 0]]))
    again, _ = sample_context_masks(3000, 8, (0.2, 0.3, 0.5), torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert interpolation_mask(2, 5).tolist() == [[1, 0, 0, 0, 1]] * 2
    regimes = sample_regimes(100, (0.5, 0.5), gen)
    assert set(regimes.tolist()) == {0, 1}
    z = torch.ones(1, 4, 1, 1, 1)
    assert masked_context(z, torch.tensor([[1.0, 1, 0, 0]])).flatten().tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="T = 1"):
        sample_context_masks(2, 1, (0.2, 0.3, 0.5))
    with pytest.raises(ValueError, match="summing to 1"):
        sample_context_counts_bad()


def sample_context_counts_bad():
    from drivesim.diffusion.masks import sample_context_counts

    return sample_context_counts(2, (0.5, 0.6))


class EgoModel(CountingModel):
    """CountingModel plus a per-frame term from the ego speed when it is not dropped."""

    def __call__(self, x, t, cond):
        out = super().__call__(x, t, cond)
        keep = ~(cond.drop_ego if cond.drop_ego is not None else torch.zeros(x.shape[0], dtype=torch.bool))
        return out + (keep[:, None] * cond.ego_speed)[:, :, None, None, None] * (1 + cond.context_mask.sum(1))[
            :, None, None, None, None]


def test_ego_guidance_is_the_last_nested_term_with_per_frame_scales(setup):
    """D = ... + s_ego (D(ctx,lab,box,ego) - D(ctx,lab,box)); a per-frame scale [T] applies per frame."""
    cond, x, t = setup
    cond = Conditioning(**{**vars(cond), "ego_speed": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
                           "ego_yaw_rate": torch.zeros(B, T)})
    model = EgoModel()
    no_ctx = model(x, t, cond.with_dropped(context=True, ego=True))  # labels and boxes are not guided: kept
    no_ego = model(x, t, cond.with_dropped(ego=True))
    full = model(x, t, cond)
    model.calls = 0
    out = guided_denoiser(model, cond, {"context": 2.0, "ego": 3.0})(x, t)
    assert model.calls == 1
    torch.testing.assert_close(out, no_ctx + 2 * (no_ego - no_ctx) + 3 * (full - no_ego))
    per_frame = torch.tensor([0.0, 1.0, 2.0])
    out = guided_denoiser(model, cond, {"ego": per_frame})(x, t)
    torch.testing.assert_close(out, no_ego + per_frame[None, :, None, None, None] * (full - no_ego))
    torch.testing.assert_close(out[:, 0], no_ego[:, 0])  # scale 0 on frame 0: ego dropped there
