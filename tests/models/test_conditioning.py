"""Conditioning record validation/helpers and the label / box encoders."""

import pytest
import torch

from drivesim.models.conditioning import (
    LAYOUT_CHANNELS,
    BoxEncoder,
    Conditioning,
    LabelEncoder,
    box_layout,
    fourier_features,
    truncate_boxes,
)


def random_boxes(generator, b=2, t=3, n=4):
    corners = torch.rand(b, t, n, 2, 2, generator=generator).sort(dim=-2).values  # x1<x2, y1<y2
    return torch.stack([corners[..., 0, 0], corners[..., 0, 1], corners[..., 1, 0],
                        corners[..., 1, 1]], dim=-1)


def make_cond(generator, b=2, t=3, n=4, **kw):
    classes = torch.randint(1, 7, (b, t, n), generator=generator)
    classes[..., -1] = 0  # last slot is padding
    fields = dict(boxes=random_boxes(generator, b, t, n), box_classes=classes,
                  box_ids=torch.randint(1, 50, (b, t, n), generator=generator),
                  daynight=torch.tensor([0, 1] * (b // 2) + [2] * (b % 2)),
                  crowd=torch.arange(b) % 4)
    fields.update(kw)
    return Conditioning(**fields)


def test_validation_errors_name_the_value(generator):
    cond = make_cond(generator)
    boxes = cond.boxes.clone()
    boxes[1, 2, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Conditioning(boxes=boxes, box_classes=cond.box_classes)
    boxes = cond.boxes.clone()
    boxes[0, 0, 1, 2] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        Conditioning(boxes=boxes, box_classes=cond.box_classes)
    with pytest.raises(ValueError, match=r"daynight.*\[5\]"):
        Conditioning(daynight=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"crowd.*\[4\]"):
        Conditioning(crowd=torch.tensor([4, 1]))
    classes = cond.box_classes.clone()
    classes[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r"box_classes.*\[9\]"):
        Conditioning(boxes=cond.boxes, box_classes=classes)
    with pytest.raises(ValueError, match="box_classes: expected shape"):
        Conditioning(boxes=cond.boxes, box_classes=cond.box_classes[:, :2])
    with pytest.raises(ValueError, match="batch sizes differ"):
        Conditioning(daynight=torch.tensor([0, 1]), crowd=torch.tensor([0]))
    with pytest.raises(ValueError, match="context_mask"):
        Conditioning(context=torch.zeros(2, 1, 4, 4, 4))


def test_with_dropped_copies_and_accumulates(generator):
    ctx = torch.randn(2, 2, 4, 4, 4, generator=generator)
    cond = make_cond(generator, context=ctx, context_mask=torch.ones(2, 2))
    dropped = cond.with_dropped(boxes=torch.tensor([True, False]), context=torch.tensor([False, True]))
    assert cond.drop_boxes is None and torch.equal(cond.context_mask, torch.ones(2, 2))
    assert dropped.drop_boxes.tolist() == [True, False]
    assert dropped.context_mask.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    both = dropped.with_dropped(boxes=torch.tensor([False, True]), labels=True)
    assert both.drop_boxes.tolist() == [True, True] and both.drop_labels.tolist() == [True, True]
    assert dropped.drop_boxes.tolist() == [True, False]
    with pytest.raises(ValueError, match="mask must be"):
        cond.with_dropped(boxes=torch.tensor([True]))


def test_cat_to_and_from_batch(generator):
    a = make_cond(generator).with_dropped(labels=True)
    b = make_cond(generator, b=3)
    both = Conditioning.cat([a, b])
    assert both.boxes.shape == (5, 3, 4, 4)
    assert both.drop_labels.tolist() == [True, True, False, False, False]
    assert both.drop_boxes is None
    with pytest.raises(ValueError, match="some items only"):
        Conditioning.cat([a, Conditioning(daynight=torch.tensor([0]))])
    half = a.to("cpu", dtype=torch.float64)
    assert half.boxes.dtype == torch.float64 and half.box_classes.dtype == torch.int64
    batch = {"boxes": a.boxes, "box_classes": a.box_classes, "box_ids": a.box_ids,
             "daynight": a.daynight, "crowd": a.crowd, "fps": torch.ones(2), "clip_id": ["x", "y"]}
    again = Conditioning.from_batch(batch)
    assert torch.equal(again.boxes, a.boxes) and again.context is None


def test_fourier_features():
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    f = fourier_features(x, 3)
    assert f.shape == (1, 4 * 7)
    assert torch.equal(f[:, :4], x)
    # sin(2^k pi x) block, coordinate-major: x=0.5, k=0 -> sin(pi/2) = 1
    assert f[0, 4 + 2 * 3 + 0].item() == pytest.approx(1.0)


def test_truncate_boxes_keeps_largest_with_warning():
    boxes = torch.tensor([[[0, 0, .1, .1], [0, 0, .5, .5], [0, 0, .3, .3], [0, 0, .9, .9],
                           [0, 0, .2, .2]]])
    classes = torch.tensor([[1, 1, 1, 0, 1]])  # the biggest one is padding
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with pytest.warns(UserWarning, match="max_boxes=2"):
        b, c, i = truncate_boxes(boxes, classes, ids, 2)
    assert i.tolist() == [[2, 3]] and c.tolist() == [[1, 1]]
    assert torch.equal(b, boxes[:, [1, 2]])


def test_box_tokens_padding_and_drop(generator):
    torch.manual_seed(0)
    enc = BoxEncoder(token_dim=16, max_boxes=4, num_freqs=4).eval()
    cond = make_cond(generator)
    tokens = enc(cond, 2, 3, torch.device("cpu"))
    assert tokens.shape == (6, 5, 16)
    # padding slot (last) reads the learned pad token exactly
    assert torch.equal(tokens[:, -1], enc.pad_token.expand(6, 16))
    # moving a padded box changes nothing
    boxes = cond.boxes.clone()
    boxes[..., -1, :] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    moved = enc(Conditioning(boxes=boxes, box_classes=cond.box_classes), 2, 3, torch.device("cpu"))
    torch.testing.assert_close(moved, tokens)
    # a real box does change the other (fused) tokens
    boxes[..., 0, :] = torch.tensor([0.5, 0.5, 0.6, 0.9])
    changed = enc(Conditioning(boxes=boxes, box_classes=cond.box_classes), 2, 3, torch.device("cpu"))
    assert (changed[:, 1] - tokens[:, 1]).abs().max() > 1e-4
    # dropped sample: independent of its boxes, equal to the no-boxes/dropped tokens
    drop = cond.with_dropped(boxes=torch.tensor([True, False]))
    d1 = enc(drop, 2, 3, torch.device("cpu"))
    d2 = enc(Conditioning(boxes=boxes, box_classes=cond.box_classes,
                          drop_boxes=torch.tensor([True, False])), 2, 3, torch.device("cpu"))
    torch.testing.assert_close(d1[:3], d2[:3])
    assert torch.equal(d1[:3, 1:], enc.pad_token.expand(3, 4, 16))
    assert (d1[:3, 0] - tokens[:3, 0]).abs().max() > 1e-4  # drop token != frame token
    # no boxes at all (None, or labels only) == dropped
    for absent in (None, Conditioning(daynight=torch.tensor([0, 1]))):
        torch.testing.assert_close(enc(absent, 2, 3, torch.device("cpu")), d1[:3, :][:1].expand(6, 5, 16))
    # fewer boxes than max_boxes are padded: same tokens as explicit padding
    fewer = enc(Conditioning(boxes=cond.boxes[:, :, :3], box_classes=cond.box_classes[:, :, :3]),
                2, 3, torch.device("cpu"))
    torch.testing.assert_close(fewer, tokens)


def test_box_tokens_permutation_equivariant(generator):
    enc = BoxEncoder(token_dim=16, max_boxes=4, num_freqs=4).eval()
    cond = make_cond(generator)
    perm = torch.tensor([2, 0, 1, 3])
    permuted = Conditioning(boxes=cond.boxes[:, :, perm], box_classes=cond.box_classes[:, :, perm])
    a = enc(cond, 2, 3, torch.device("cpu"))
    b = enc(permuted, 2, 3, torch.device("cpu"))
    torch.testing.assert_close(b[:, 1:], a[:, 1:][:, perm], atol=1e-5, rtol=1e-5)


def test_label_encoder_null_embedding():
    enc = LabelEncoder(embed_dim=8, token_dim=6)
    cond = Conditioning(daynight=torch.tensor([0, 1]), crowd=torch.tensor([2, 3]))
    emb, tok = enc(cond, 2, torch.device("cpu"))
    assert emb.shape == (2, 8) and tok.shape == (2, 1, 6)
    assert (emb[0] - emb[1]).abs().max() > 0
    dropped, _ = enc(cond.with_dropped(labels=True), 2, torch.device("cpu"))
    null, _ = enc(None, 2, torch.device("cpu"))
    assert torch.equal(dropped, null) and torch.equal(dropped[0], dropped[1])
    expected = enc.daynight.weight[-1] + enc.crowd.weight[-1]
    torch.testing.assert_close(null[0], expected)


def test_box_layout_is_cell_coverage_per_class():
    h, w = 4, 8  # cells of 0.25 x 0.125
    boxes = torch.tensor([[[[0.25, 0.25, 0.375, 0.5],      # class 1: exactly cell (row 1, col 2)
                            [0.5, 0.5, 0.5625, 0.625],     # class 4: half of cell (2, 4) in x and y
                            [0.0, 0.0, 1.0, 1.0],          # padding: ignored
                            [0.25, 0.25, 0.375, 0.5]]]])   # class 1 again on the same cell: clamped to 1
    classes = torch.tensor([[[1, 4, 0, 1]]])
    cond = Conditioning(boxes=boxes, box_classes=classes)
    layout = box_layout(cond, 1, 1, h, w, torch.device("cpu"))
    assert layout.shape == (1, LAYOUT_CHANNELS, h, w)
    expect = torch.zeros(1, LAYOUT_CHANNELS, h, w)
    expect[0, 0, 1, 2] = 1.0
    expect[0, 3, 2, 4] = 0.25
    torch.testing.assert_close(layout, expect)


def test_box_layout_total_equals_box_area_and_respects_drop(generator):
    boxes = random_boxes(generator, b=2, t=3, n=1)
    cond = Conditioning(boxes=boxes, box_classes=torch.full((2, 3, 1), 2))
    layout = box_layout(cond, 2, 3, 8, 16, torch.device("cpu"))  # [(B T), C, h, w]
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).reshape(6)
    torch.testing.assert_close(layout[:, 1].sum(dim=(1, 2)), area * 8 * 16)
    assert layout[:, [0, 2, 3, 4, 5]].abs().max() == 0
    dropped = box_layout(cond.with_dropped(boxes=torch.tensor([True, False])), 2, 3, 8, 16, torch.device("cpu"))
    assert dropped[:3].abs().max() == 0 and torch.equal(dropped[3:], layout[3:])
    assert box_layout(None, 2, 3, 8, 16, torch.device("cpu")).abs().max() == 0
