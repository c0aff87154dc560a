import numpy as np
import pytest

from drivesim.data.boxes import (
    ResizeCrop,
    box_areas,
    clip_boxes,
    denormalize_boxes,
    draw_boxes,
    normalize_boxes,
    pad_boxes,
    validate_boxes,
    validate_classes,
)
from drivesim.utils.io import DriveSimInputError


def test_normalize_denormalize_round_trip():
    px = np.array([[0, 0, 256, 128], [10.5, 20, 30, 40]], dtype=np.float32)
    norm = normalize_boxes(px, width=256, height=128)
    np.testing.assert_allclose(norm[0], [0, 0, 1, 1])
    np.testing.assert_allclose(norm[1], [10.5 / 256, 20 / 128, 30 / 256, 40 / 128], rtol=1e-6)
    np.testing.assert_allclose(denormalize_boxes(norm, 256, 128), px, rtol=1e-6)


def test_clip_and_areas():
    b = np.array([[-0.5, 0.2, 0.5, 1.5], [0.6, 0.6, 0.5, 0.7]])
    np.testing.assert_allclose(clip_boxes(b)[0], [0, 0.2, 0.5, 1.0])
    np.testing.assert_allclose(box_areas(clip_boxes(b)), [0.4, 0.0], atol=1e-7)


def test_validate_tolerance_clips_small_overshoot():
    out = validate_boxes([[-0.0005, 0.1, 1.0009, 0.5]])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.0, 0.1, 1.0, 0.5], atol=1e-7)


@pytest.mark.parametrize("box, why", [
    ([float("nan"), 0, 0.5, 0.5], "NaN"),
    ([0, 0, 1.2, 0.5], "normalised"),
    ([0.6, 0, 0.5, 0.5], "x1 <= x2"),
])
def test_validate_rejects_with_file_field_value(box, why):
    with pytest.raises(DriveSimInputError) as err:
        validate_boxes([[0.1, 0.1, 0.2, 0.2], box], path="clips/a/clip.json", field="annotations[3].boxes")
    msg = str(err.value)
    assert "clips/a/clip.json" in msg and "annotations[3].boxes[1]" in msg and why in msg
    assert err.value.field == "annotations[3].boxes[1]"


def test_validate_shape_and_classes():
    with pytest.raises(DriveSimInputError, match=r"shape \[n, 4\]"):
        validate_boxes([[0.1, 0.2, 0.3]])
    assert validate_boxes([]).shape == (0, 4)
    with pytest.raises(DriveSimInputError, match=r"classes\[1\]"):
        validate_classes([1, 7], 2)
    with pytest.raises(DriveSimInputError, match="class id"):
        validate_classes([0], 1)  # 0 is padding, not a real class
    np.testing.assert_array_equal(validate_classes([1, 6], 2), [1, 6])


def test_pad_and_truncate_by_area_with_mask():
    boxes = np.array([[0, 0, 0.1, 0.1], [0, 0, 0.5, 0.5], [0, 0, 0.3, 0.3], [0, 0, 0.2, 0.2]], np.float32)
    classes, ids = np.array([1, 2, 3, 4]), np.array([11, 12, 13, 14])
    padded = pad_boxes(boxes, classes, ids, 6)
    assert padded.boxes.shape == (6, 4) and padded.mask.tolist() == [True] * 4 + [False] * 2
    assert padded.classes.tolist() == [1, 2, 3, 4, 0, 0] and padded.ids[4:].tolist() == [0, 0]
    with pytest.warns(UserWarning, match="keeping the 2 largest"):
        cut = pad_boxes(boxes, classes, ids, 2)
    # the two largest boxes survive, in their original order
    assert cut.ids.tolist() == [12, 13] and cut.mask.all()
    np.testing.assert_array_equal(cut.boxes, boxes[[1, 2]])


def test_resize_crop_geometry_and_boxes():
    # 100x400 source -> 50x100 output: scale 0.5 by height => 50x200, centre crop 50 px each side
    rc = ResizeCrop.center((100, 400), (50, 100))
    assert rc.resized_hw == (50, 200) and (rc.top, rc.left) == (0, 50)
    src = np.zeros((100, 400, 3), np.uint8)
    src[:, 200:] = 255  # right half white
    out = rc.apply_image(src)
    assert out.shape == (50, 100, 3)
    assert out[:, :48].max() == 0 and out[:, 52:].min() == 255  # edge at the crop centre
    boxes = np.array([[0.25, 0.0, 0.75, 1.0],    # exactly the crop window
                      [0.0, 0.0, 0.1, 0.5],      # entirely cropped away
                      [0.5, 0.5, 0.9, 1.0]])     # cut at the right edge
    out_boxes, keep = rc.apply_boxes(boxes)
    np.testing.assert_allclose(out_boxes[0], [0, 0, 1, 1], atol=1e-6)
    np.testing.assert_allclose(out_boxes[2], [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    assert keep.tolist() == [True, False, True]


def test_resize_crop_boxes_follow_pixels():
    """A filled rectangle and its box stay aligned through resize + crop."""
    src_h, src_w = 90, 160
    img = np.zeros((src_h, src_w, 3), np.uint8)
    x1, y1, x2, y2 = 60, 30, 100, 70
    img[y1:y2, x1:x2] = 255
    rc = ResizeCrop.center((src_h, src_w), (64, 64))
    out = rc.apply_image(img)
    (b,), _ = rc.apply_boxes(normalize_boxes(np.array([[x1, y1, x2, y2]]), src_w, src_h))
    ys, xs = np.nonzero(out[..., 0] > 127)
    px = denormalize_boxes(b, 64, 64)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], px, atol=1.0)


def test_draw_boxes_copies_and_colours():
    frame = np.zeros((32, 64, 3), np.uint8)
    out = draw_boxes(frame, np.array([[0.25, 0.25, 0.75, 0.75], [0, 0, 1, 1]]), np.array([1, 0]),
                     np.array([5, 0]))
    assert frame.max() == 0  # input untouched
    assert out[8, 16:48].any() and out[8:24, 16].any()  # top and left edges drawn
    assert out[0, 0].max() == 0  # padding box (class 0) not drawn
