"""`drivesim data prepare`: any training DATA -> the clip folders a run trains on.

DATA is one of (``detect_data``):

- a clip folder (``manifest.jsonl``, docs/data-format.md): used in place;
- a folder of videos (``.mp4 .mov .avi .mkv .m4v``, searched recursively): converted by the
  dashcam converter (``data_prep/videos_to_clips.py``); a corrupt video is reported and left
  out, the others are used;
- a nuScenes dataroot (a ``v1.0-*`` table folder): converted through the devkit
  (``data_prep/nuscenes_to_clips.py``);
- ``synthetic``: the synthetic world, exported by ``drivesim data synth`` (the chain runs that
  command itself; this tool does not handle it);
- ``synthetic-stream``: the world rendered by every stage on the fly (no export, no latent
  cache: the LDM stages encode with the autoencoder), what ``drivesim gpu-check`` trains on.

Converted clips go to ``--out`` at the training size (and, for the video upsampler, to
``--hr-out`` at its size); a converted set without a ``val`` split gets every 8th clip as
``val`` (at least one). The tool also writes a short start clip at the training size
(``--start``: the first frames of the first ``val`` clip, what ``make rollout RUN=...`` starts
from) and a JSON summary (``--info``). Nothing usable raises one ``DriveSimInputError``.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from drivesim.data.clip_format import MANIFEST, read_clip, read_manifest, scan_clips, write_manifest
from drivesim.utils.args import hw_size
from drivesim.utils.io import DriveSimInputError, atomic_write_json

VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".m4v")  # as data_prep/videos_to_clips.py
KINDS = ("synthetic", "stream", "clips", "videos", "nuscenes")
STREAM = "synthetic-stream"
CONVERTERS = {"videos": "data_prep.videos_to_clips", "nuscenes": "data_prep.nuscenes_to_clips"}
VAL_EVERY = 8
START_FRAMES = 2
WHAT = "a clip folder (manifest.jsonl), a folder of videos, a nuScenes dataroot (v1.0-*/), or 'synthetic'"


@dataclass(frozen=True)
class DataInfo:
    """What DATA is: ``kind`` (one of KINDS), whether its clips carry boxes, the size of its
    first clip (clip folders), its nuScenes version, and whether its manifest has a val split."""

    kind: str
    data: str
    boxes: bool
    clip_size: tuple[int, int] | None = None
    version: str | None = None
    has_val: bool = True


def _videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS
                  and not p.name.startswith("."))


def nuscenes_version(root: Path) -> str | None:
    """The ``v1.0-*`` table folder of a nuScenes dataroot (trainval preferred), else None."""
    found = sorted(p.name for p in root.glob("v1.0-*") if (p / "scene.json").is_file())
    return "v1.0-trainval" if "v1.0-trainval" in found else (found[0] if found else None)


def _clip_folder_info(root: Path, data: str) -> DataInfo:
    entries = read_manifest(root)
    first = read_clip(root / entries[0].path, check_frames=False)
    boxes = False
    for entry in entries:  # the first clip with a box answers it; unlabelled footage reads all
        if any(len(b) for b in read_clip(root / entry.path, check_frames=False).boxes):
            boxes = True
            break
    if not any(e.split == "train" for e in entries):
        raise DriveSimInputError("the manifest has no 'train' split", path=root / MANIFEST, field="split",
                                 value=sorted({e.split for e in entries}))
    return DataInfo("clips", data, boxes, (first.height, first.width), has_val=any(e.split == "val" for e in entries))


def detect_data(data: str) -> DataInfo:
    """What DATA is; a folder with nothing usable raises naming it."""
    if data == "synthetic":
        return DataInfo("synthetic", data, True)
    if data == STREAM:
        return DataInfo("stream", data, True)
    root = Path(data)
    if not root.is_dir():
        raise DriveSimInputError(f"DATA folder not found; expected {WHAT}", path=root, field="DATA")
    if (root / MANIFEST).is_file():
        return _clip_folder_info(root, data)
    version = nuscenes_version(root)
    if version is not None:
        return DataInfo("nuscenes", data, True, version=version)
    if _videos(root):
        return DataInfo("videos", data, False)
    if scan_clips(root):
        raise DriveSimInputError("clip folders but no manifest.jsonl: run `drivesim data check --write-manifest` "
                                 "on it first", path=root, field="DATA")
    raise DriveSimInputError(f"nothing usable: expected {WHAT}", path=root, field="DATA")


def _converter_argv(info: DataInfo, out: Path, size: str, clip_seconds: float, workers: int,
                    progress: bool) -> list[str]:
    common = ["--out", str(out), "--size", size, "--workers", str(workers)] + ([] if progress else ["--no-progress"])
    if info.kind == "videos":
        return ["--input", info.data, "--clip-seconds", f"{clip_seconds:g}", "--val-fraction", "0", *common]
    return ["--dataroot", info.data, "--version", str(info.version), *common]


def convert(info: DataInfo, out: Path, size: str, clip_seconds: float, *, workers: int = 1,
            progress: bool = True) -> None:
    """Run the kind's converter into ``out`` (resumable: finished clips are kept). Items that
    fail are reported by the converter and left out; no usable clip at all raises."""
    module = importlib.import_module(CONVERTERS[info.kind])
    parser = argparse.ArgumentParser(prog=f"drivesim data {info.kind}")
    module.add_arguments(parser)
    code = module.run(parser.parse_args(_converter_argv(info, out, size, clip_seconds, workers, progress)))
    report = _read_report(out)
    try:
        read_manifest(out)
    except DriveSimInputError:
        failed = {**report.get("failed", {}), **report.get("skipped", {})}
        first = next(iter(failed.items()), ("-", "no items"))
        raise DriveSimInputError(f"nothing usable: no clip converted ({len(report.get('failed', {}))} failed, "
                                 f"{len(report.get('skipped', {}))} skipped; first: {first[0]}: {first[1]})",
                                 path=info.data, field="DATA") from None
    if code != 0:
        print(f"-- {len(report.get('failed', {}))} of the inputs failed and are left out "
              f"(listed above and in {out / 'conversion_report.json'}); training uses the rest", flush=True)


def _read_report(out: Path) -> dict:
    import json

    path = out / "conversion_report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def ensure_val_split(root: Path, val_ids: set[str] | None = None) -> set[str]:
    """Give a converted set a ``val`` split when it has none: every VAL_EVERY-th clip (at least
    one), or exactly ``val_ids``. Returns the val clip ids; fewer than 2 clips raise."""
    entries = read_manifest(root)
    if val_ids is None:
        if any(e.split == "val" for e in entries):
            return {e.clip_id for e in entries if e.split == "val"}
        if len(entries) < 2:
            raise DriveSimInputError("one clip is not enough: training holds one clip out for validation; give "
                                     "more or longer footage", path=root / MANIFEST, field="clips", value=len(entries))
        picked = entries[VAL_EVERY - 1::VAL_EVERY] or entries[-1:]
        val_ids = {e.clip_id for e in picked}
    updated = [replace(e, split="val" if e.clip_id in val_ids else "train") for e in entries]
    write_manifest(root, updated, overwrite=True)
    return val_ids


def write_start_clip(root: Path, out: Path, size: tuple[int, int], split: str = "val") -> Path:
    """The first START_FRAMES frames of the first ``split`` clip (else the first clip) of ``root``,
    resized and centre-cropped to ``size``, as a clip folder ``out`` (a rollout start)."""
    from drivesim.data.boxes import ResizeCrop
    from drivesim.data.clip_format import ClipWriter

    entries = read_manifest(root)
    entry = next((e for e in entries if e.split == split), entries[0])
    clip = read_clip(root / entry.path)
    rc = ResizeCrop.center((clip.height, clip.width), size)
    n = min(START_FRAMES, clip.num_frames)
    with ClipWriter(out, fps=clip.fps, height=size[0], width=size[1],
                    labels={**{k: v for k, v in clip.labels.items() if k != "split"}, "source_clip": entry.clip_id},
                    frames_format="png", overwrite=True) as w:
        for rgb in clip.frames(list(range(n))):
            w.add_frame(rc.apply_image(rgb))
    clip.close()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help=f"DATA: {WHAT}")
    parser.add_argument("--out", required=True, help="clip folder for converted data (unused for a clip folder)")
    parser.add_argument("--size", type=hw_size("--size"), required=True, help="HxW of the training clips")
    parser.add_argument("--clip-seconds", type=float, default=4.0, help="length of converted clips")
    parser.add_argument("--hr-out", default=None, help="also convert at --hr-size into this folder (upsampler)")
    parser.add_argument("--hr-size", type=hw_size("--hr-size"), default=None)
    parser.add_argument("--start", required=True, help="start clip folder to write")
    parser.add_argument("--info", required=True, help="JSON summary to write")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    info = detect_data(args.data)
    if info.kind in ("synthetic", "stream"):
        raise DriveSimInputError("the synthetic world is exported by `drivesim data synth`", field="--data",
                                 value=args.data)
    size = f"{args.size[0]}x{args.size[1]}"
    root = Path(args.data)
    summary = {"kind": info.kind, "data": args.data, "boxes": info.boxes}
    if info.kind in CONVERTERS:
        root = Path(args.out)
        convert(info, root, size, args.clip_seconds, workers=args.workers, progress=not args.no_progress)
        val = ensure_val_split(root)
        if args.hr_out:
            hr_size = f"{args.hr_size[0]}x{args.hr_size[1]}"
            convert(info, Path(args.hr_out), hr_size, args.clip_seconds, workers=args.workers,
                    progress=not args.no_progress)
            ensure_val_split(Path(args.hr_out), val)
        summary["report"] = _read_report(root)
    entries = read_manifest(root)
    splits = {s: sum(e.split == s for e in entries) for s in sorted({e.split for e in entries})}
    write_start_clip(root, Path(args.start), args.size, "val" if splits.get("val") else "train")
    atomic_write_json(Path(args.info), {**summary, "root": str(root), "splits": splits, "info": asdict(info)})
    print(f"data: {info.kind}, {len(entries)} clips ({splits}); boxes: {'yes' if info.boxes else 'no'}")
    return 0
