"""``drivesim data check DIR``: validate a clip dataset and report every bad clip.

Checks the manifest, each clip's ``clip.json`` (schema, fields, boxes, labels), that the
manifest agrees with the clip, and (unless ``--no-decode``) that every frame decodes.
Prints one line per problem and a summary; exit code 1 if anything is bad.
``--write-manifest`` builds a missing ``manifest.jsonl`` from the clip folders found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drivesim.data.clip_format import (
    MANIFEST,
    ManifestEntry,
    assign_split,
    manifest_entry,
    read_clip,
    read_manifest,
    scan_clips,
    write_manifest,
)
from drivesim.utils.io import DriveSimInputError

DECODE_CHUNK = 64  # frames decoded at a time (bounded memory for long clips)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="dataset folder (clips + manifest.jsonl)")
    parser.add_argument("--no-decode", action="store_true", help="skip decoding every frame (faster)")
    parser.add_argument("--write-manifest", action="store_true",
                        help="if manifest.jsonl is missing, write it from the valid clip folders")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="with --write-manifest")


def check_clip(root: Path, entry: ManifestEntry, decode: bool = True) -> list[str]:
    """Problems of one manifest entry (empty list = good)."""
    try:
        clip = read_clip(root / entry.path)
        problems = []
        for name, listed, actual in (("clip_id", entry.clip_id, clip.clip_id),
                                     ("num_frames", entry.num_frames, clip.num_frames),
                                     ("fps", entry.fps, clip.fps)):
            if listed != actual:
                problems.append(f"{root / MANIFEST}: field '{name}': manifest says {listed!r}, "
                                f"{clip.path / 'clip.json'} says {actual!r}")
        if decode:
            for start in range(0, clip.num_frames, DECODE_CHUNK):
                clip.frames(range(start, min(start + DECODE_CHUNK, clip.num_frames)))
        clip.close()
        return problems
    except DriveSimInputError as err:
        return [str(err)]


def _build_manifest(root: Path, val_fraction: float) -> int:
    folders = scan_clips(root)
    entries, bad = [], 0
    for i, folder in enumerate(folders):
        try:
            entries.append(manifest_entry(read_clip(folder), root, assign_split(i, len(folders), val_fraction)))
        except DriveSimInputError as err:
            print(f"BAD {folder.name}: {err}")
            bad += 1
    if not entries:
        print(f"{root}: no valid clip folders found; no manifest written", file=sys.stderr)
        return 1
    print(f"wrote {write_manifest(root, entries)} with {len(entries)} clips")
    return 1 if bad else 0


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.write_manifest and root.is_dir() and not (root / MANIFEST).exists():
        return _build_manifest(root, args.val_fraction)
    entries = read_manifest(root)  # no dataset at all is a user error: one line, exit 2
    bad = 0
    for entry in entries:
        problems = check_clip(root, entry, decode=not args.no_decode)
        bad += bool(problems)
        for problem in problems:
            print(f"BAD {entry.clip_id}: {problem}")
    listed = {(root / e.path).resolve() for e in entries}
    unlisted = [p for p in scan_clips(root) if p.resolve() not in listed]
    for folder in unlisted:
        print(f"note: {folder} has a clip.json but is not in {MANIFEST}")
    splits = sorted({e.split for e in entries})
    counts = ", ".join(f"{s}: {sum(e.split == s for e in entries)}" for s in splits)
    print(f"checked {len(entries)} clips ({counts}); {bad} bad, {len(entries) - bad} ok")
    return 1 if bad else 0
