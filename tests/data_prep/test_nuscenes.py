"""nuScenes: the synthetic-world fixture in nuScenes format, loaded by the real devkit, and
the converter's boxes checked against the world's own 2D boxes.

These tests need the ``nuscenes`` extra (see docs/converters.md). They are not skipped when
it is missing: CI installs it, and a missing devkit must fail loudly rather than hide.
"""

import json
import math

import numpy as np
import pytest

try:
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion
except ImportError as err:  # fail, with the fix, instead of silently skipping
    raise ImportError("tests/data_prep/test_nuscenes.py needs the nuscenes extra: "
                      "pip install -e '.[nuscenes]' && pip install --no-deps nuscenes-devkit==1.2.0") from err

from data_prep.common import hash_split, map_category
from data_prep.nuscenes_to_clips import CATEGORY_MAP, clip_to_near, official_split, project_box
from data_prep.synthetic_to_nuscenes import FixtureScene, _world, export_fixture, quaternion_wxyz
from drivesim.cli import main
from drivesim.data.clip_format import read_clip, read_manifest
from drivesim.data.ego import EgoTrack
from drivesim.data.labels import CLASS_IDS
from drivesim.utils.io import DriveSimInputError, read_json

pytestmark = pytest.mark.nuscenes

H, W = 90, 160
# scene 0's ego brakes from 14 to 10 m/s while turning left (0.12 rad/s); scene 1's drives on its own
BRAKE_LEFT = EgoTrack((0.0, 0.4, 1.6, 2.0), (14.0, 14.0, 10.0, 10.0), (0.0, 0.12, 0.12, 0.12), name="brake-left")
SCENES = (FixtureScene(seed=0, num_vehicles=8, ego=BRAKE_LEFT),
          FixtureScene(seed=1, night=True, weather="rain", num_vehicles=12))
SECONDS = 2.0  # 5 key frames, 25 frames at 12 Hz per scene


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    return export_fixture(tmp_path_factory.mktemp("nusc") / "nuscenes", SCENES, seconds=SECONDS, height=H, width=W)


@pytest.fixture(scope="module")
def converted(dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp("clips") / "ds"
    code = main(["data", "nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--out", str(out),
                 "--frames-format", "png", "--no-progress"])
    assert code == 0
    return out


def world_frames(scene: FixtureScene, n: int):
    world = _world(scene, H, W)
    return [world.step(render=False) for _ in range(n)]


def test_devkit_loads_the_fixture_with_consistent_geometry(dataroot):
    nusc = NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 10 and len(nusc.sample_data) == 50
    assert sum(sd["is_key_frame"] for sd in nusc.sample_data) == 10
    assert {json.loads((dataroot / "v1.0-mini" / f"{t}.json").read_text()) != [] for t in nusc.table_names} == {True}
    assert "night" in nusc.scene[1]["description"] and "rain" in nusc.scene[1]["description"]
    frames = world_frames(SCENES[0], 7)
    sd = nusc.get("sample_data", nusc.get("sample", nusc.scene[0]["first_sample_token"])["data"]["CAM_FRONT"])
    for _ in range(6):  # walk to the next key frame through the sweeps
        sd = nusc.get("sample_data", sd["next"])
    assert sd["is_key_frame"] and nusc.get_sample_data_path(sd["token"]).endswith(".jpg")
    pose, cs = nusc.get("ego_pose", sd["ego_pose_token"]), nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    np.testing.assert_allclose(transform_matrix(pose["translation"], Quaternion(pose["rotation"])), frames[6].ego_pose,
                               atol=1e-9)
    np.testing.assert_allclose(transform_matrix(cs["translation"], Quaternion(cs["rotation"]), inverse=True),
                               frames[6].cam_from_ego, atol=1e-9)
    np.testing.assert_allclose(cs["camera_intrinsic"], frames[6].intrinsics)
    # annotations: world 3D boxes, linked per instance
    anns = [nusc.get("sample_annotation", a) for a in nusc.get("sample", sd["sample_token"])["anns"]]
    assert len(anns) == len(frames[6].boxes3d)
    for ann in anns:  # prev links go to the same instance one key frame earlier
        if ann["prev"]:
            prev = nusc.get("sample_annotation", ann["prev"])
            assert prev["instance_token"] == ann["instance_token"] and prev["next"] == ann["token"]
            assert nusc.get("sample", ann["sample_token"])["prev"] == prev["sample_token"]
    for inst in nusc.instance:
        chain, tok = [], inst["first_annotation_token"]
        while tok:
            chain.append(tok)
            tok = nusc.get("sample_annotation", tok)["next"]
        assert len(chain) == inst["nbr_annotations"] and chain[-1] == inst["last_annotation_token"]
    centres = sorted(tuple(np.round(a["translation"], 3)) for a in anns)
    assert centres == sorted(tuple(np.round(b[:3].astype(float), 3)) for b in frames[6].boxes3d)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = Quaternion(rng.normal(size=4)).normalised
        back = quaternion_wxyz(q.rotation_matrix)
        assert np.allclose(Quaternion(back).rotation_matrix, q.rotation_matrix, atol=1e-12)


def _matches(world_px: np.ndarray, clip_px: np.ndarray, tol: float) -> dict[int, int]:
    """world box index -> clip box index for boxes that agree within ``tol`` pixels."""
    out = {}
    for i, b in enumerate(world_px):
        if len(clip_px):
            d = np.abs(clip_px - b).max(axis=1)
            if d.min() <= tol:
                out[i] = int(d.argmin())
    return out


def test_key_frame_boxes_match_the_world_within_a_pixel(converted):
    for s, scene in enumerate(SCENES):
        clip = read_clip(converted / f"synth-{s:04d}")
        assert (clip.num_frames, clip.fps, clip.height, clip.width) == (25, 12.0, H, W)
        frames = world_frames(scene, clip.num_frames)
        for k in range(0, clip.num_frames, 6):
            world_px, clip_px = frames[k].boxes * [W, H, W, H], clip.boxes[k] * [W, H, W, H]
            match = _matches(world_px, clip_px, tol=1.0)
            assert len(match) == len(world_px) == len(clip_px), (s, k, world_px, clip_px)
            for i, j in match.items():
                assert clip.classes[k][j] == frames[k].classes[i]


def test_sweep_boxes_are_interpolated_between_key_frames(converted):
    """Tracks annotated in both bracketing key frames follow the world closely on sweeps."""
    errors = []
    for s, scene in enumerate(SCENES):
        clip = read_clip(converted / f"synth-{s:04d}")
        frames = world_frames(scene, clip.num_frames)
        for k in range(clip.num_frames - 1):
            if k % 6 == 0:
                continue
            before, after = frames[k - k % 6], frames[k - k % 6 + 6]
            both = set(before.track_ids.tolist()) & set(after.track_ids.tolist())
            clip_px = clip.boxes[k] * [W, H, W, H]
            for box, tid in zip(frames[k].boxes * [W, H, W, H], frames[k].track_ids.tolist()):
                if tid in both:
                    errors.append(np.abs(clip_px - box).max(axis=1).min())
    errors = np.array(errors)
    print(f"sweep box error (px): median {np.median(errors):.3f}, 90% {np.percentile(errors, 90):.3f}, "
          f"max {errors.max():.3f} over {len(errors)} boxes")
    assert len(errors) > 50
    assert np.median(errors) < 0.1 and errors.max() < 1.5, (np.median(errors), errors.max())


def test_labels_splits_and_crowd(converted):
    entries = {e.clip_id: e for e in read_manifest(converted)}
    assert set(entries) == {"synth-0000", "synth-0001"}
    day, night = read_clip(converted / "synth-0000"), read_clip(converted / "synth-0001")
    assert (day.labels["daynight"], day.labels["weather"]) == ("day", "clear")
    assert (night.labels["daynight"], night.labels["weather"]) == ("night", "rain")
    for e in entries.values():  # fixture scenes are in no official split: the hash fallback
        assert e.split == hash_split(e.clip_id, 0.2)
    mean = np.mean([np.isin(c, [1, 2, 3]).sum() for c in night.classes])
    assert night.labels["mean_vehicles"] == pytest.approx(mean, abs=1e-3) and night.labels["crowd"] == "crowded"


def test_resize_subset_clip_seconds_resume_and_overwrite(dataroot, tmp_path):
    out = tmp_path / "small"
    args = ["data", "nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--out", str(out),
            "--scenes", "synth-0001", "--size", "64x64", "--fps", "6", "--clip-seconds", "1", "--no-progress"]
    assert main(args) == 0
    assert {e.clip_id for e in read_manifest(out)} == {"synth-0001_00", "synth-0001_01"}
    clip = read_clip(out / "synth-0001_01")
    assert (clip.num_frames, clip.fps, clip.height, clip.width) == (6, 6.0, 64, 64)
    # 90x160 covered to 64x64: scale 64/90, then the middle 64 of 113.8 columns
    frames = world_frames(SCENES[1], 19)
    s, x0 = 64 / 90, (round(160 * 64 / 90) - 64) // 2
    want = np.clip(frames[18].boxes * [W, H, W, H] * s - [x0, 0, x0, 0], 0, 64) / 64  # 1.5 s = frame 18, a key frame
    want = want[(want[:, 2] - want[:, 0]) * 64 >= 1]
    assert len(_matches(want * 64, clip.boxes[3] * 64, tol=0.5)) == len(want) == len(clip.boxes[3])
    stamp = (out / "synth-0001_00" / "clip.json").stat().st_mtime_ns
    assert main(args) == 0
    assert read_json(out / "conversion_report.json")["resumed"] == ["synth-0001_00", "synth-0001_01"]
    assert (out / "synth-0001_00" / "clip.json").stat().st_mtime_ns == stamp
    assert main([*args, "--overwrite", "--workers", "2"]) == 0
    assert len(read_json(out / "conversion_report.json")["converted"]) == 2


def test_bad_inputs_name_the_problem(dataroot, tmp_path):
    with pytest.raises(DriveSimInputError, match="v1.0-trainval.*--version"):
        main(["data", "nuscenes", "--dataroot", str(dataroot), "--out", str(tmp_path / "o"), "--debug"])
    with pytest.raises(DriveSimInputError, match="--scenes.*scene-9999"):
        main(["data", "nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--out",
              str(tmp_path / "o"), "--scenes", "scene-9999", "--debug"])
    code = main(["data", "nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--out",
                 str(tmp_path / "o"), "--camera", "CAM_BACK", "--no-progress"])
    failed = read_json(tmp_path / "o" / "conversion_report.json")["failed"]
    assert code == 1 and "CAM_BACK" in failed["synth-0000"]


def test_official_splits_and_category_map():
    assert official_split("scene-0061", "v1.0-mini", 0.2) == "train"
    assert official_split("scene-0103", "v1.0-mini", 0.2) == "val"
    assert official_split("scene-0001", "v1.0-trainval", 0.2) == "train"
    assert official_split("scene-0003", "v1.0-trainval", 0.2) == "val"
    assert official_split("scene-0077", "v1.0-test", 0.2) == "test"
    expect = {"vehicle.car": "car", "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus",
              "vehicle.truck": "truck", "human.pedestrian.police_officer": "pedestrian",
              "vehicle.motorcycle": "cyclist", "vehicle.bicycle": "cyclist", "vehicle.trailer": "other",
              "vehicle.emergency.ambulance": "truck", "movable_object.barrier": None,
              "static_object.bicycle_rack": None}
    for name, cls in expect.items():
        assert map_category(name, CATEGORY_MAP) == (None if cls is None else CLASS_IDS[cls]), name


def test_near_plane_clipping_and_projection_are_exact():
    K = np.array([[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]])
    # a 2 m cube centred 5 m ahead: corners at z 4 and 6, x/y +-1
    cube = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (4, 6)], float).T
    np.testing.assert_allclose(project_box(cube, K), [80 - 25, 45 - 25, 80 + 25, 45 + 25])
    # the same cube straddling the camera (z from -1 to 1): only z >= 0.1 remains
    pts = clip_to_near(cube - [[0], [0], [5]])
    assert pts.shape[0] == 3 and pts[2].min() == pytest.approx(0.1) and pts[2].max() == pytest.approx(1.0)
    np.testing.assert_allclose(project_box(cube - [[0], [0], [5]], K), [80 - 1000, 45 - 1000, 80 + 1000, 45 + 1000])
    assert project_box(cube - [[0], [0], [10]], K) is None
    assert math.isfinite(project_box(cube - [[0], [0], [4.05]], K)[0])


def test_clip_dataset_loads_the_converted_scenes(converted):
    from drivesim.data.datasets import ClipDataset

    split = read_manifest(converted)[0].split
    ds = ClipDataset(converted, split=split, frames=4, fps=6.0, height=45, width=80, max_boxes=8)
    sample = ds[0]
    assert sample["video"].shape == (4, 3, 45, 80) and sample["boxes"].shape == (4, 8, 4)
    assert (sample["box_classes"] > 0).any()


def test_ego_motion_from_the_ego_poses_matches_the_world(converted):
    """Central differences of the 12 Hz ego poses against the world's exact speed and yaw rate (which
    steps with the 20 Hz simulation: the speed may differ by half a tick of acceleration, and a
    yaw rate that steps (a lane change starting) by about half the step)."""
    for s, scene in enumerate(SCENES):
        clip = read_clip(converted / f"synth-{s:04d}")
        frames = world_frames(scene, clip.num_frames)
        ego = clip.ego_arrays(range(clip.num_frames))
        assert ego.known.all()
        speed = np.array([f.ego_speed for f in frames])
        yaw = np.array([f.ego_yaw_rate for f in frames])
        inner = slice(1, -1)  # the end frames are one-sided differences
        half_tick = 0.025 * np.abs(np.gradient(speed, 1.0 / 12.0))  # m/s: half a 20 Hz tick of acceleration
        assert (np.abs(ego.speed - speed) <= 0.03 + 1.5 * half_tick)[inner].all(), (s, ego.speed, speed)
        jump = np.maximum(np.abs(np.diff(yaw, prepend=yaw[0])), np.abs(np.diff(yaw, append=yaw[-1])))
        assert (np.abs(ego.yaw_rate - yaw) <= 0.01 + 0.6 * jump)[inner].all(), (s, ego.yaw_rate, yaw)
    braking = read_clip(converted / "synth-0000").ego
    assert braking.speed[0] > 13.5 and braking.speed[-2] < 10.5 and braking.yaw_rate[12] == pytest.approx(0.12, abs=0.02)
