"""Streaming, resumable video output for rollouts.

An mp4 cannot be appended to after a SIGKILL, so frames are encoded as they are produced
into one H.264 *chunk* file per segment (each chunk starts with a key frame and refers to
nothing before it), written atomically under ``<out>/.rollout/``. At the end the chunks' packets
are concatenated into ``frames.mp4`` without re-encoding (a remux: constant memory, fast).
Encoder settings are fixed (libx264, one thread, no B-frames, fixed CRF), so the same
frames give the same bytes, and a resumed run that re-encodes the missing chunks produces
a file identical to an uninterrupted run.

The per-frame boxes and commanded ego motion used for every output frame are stored next to
each chunk and written into ``clip.json`` at the end, so a rollout folder is a valid clip
(``drivesim.clip/1``) whose ``annotations[i].ego`` is the motion frame i was asked to show.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from drivesim.data import labels as L
from drivesim.data.boxes import draw_boxes
from drivesim.data.clip_format import CLIP_JSON, SCHEMA
from drivesim.data.ego import EgoSeries
from drivesim.data.video_io import VideoWriter
from drivesim.rollout.scenario import Scenario, ScenarioFrames
from drivesim.utils.io import atomic_path, atomic_write_text

WORK_DIR = ".rollout"
VIDEO_NAME = "frames.mp4"
DEBUG_NAME = "debug.mp4"
CRF = 18
# one key frame per chunk (a chunk is a segment, far shorter) and a GOP size that does not depend on
# the chunk length: x264 derives SPS fields from it (a 1-frame chunk got an intra-only SPS), and the
# concatenated file carries chunk 0's SPS for every chunk
GOP_SIZE = 1024


def encode_chunk(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode uint8 frames ``[n, H, W, 3]`` (RGB) to a standalone H.264 mp4, atomically."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [n, H, W, 3], got {frames.dtype} {frames.shape}")
    # the one H.264 encoder (drivesim.data.video_io); a fixed GOP, one thread and no B-frames
    # make the same frames give the same bytes, so chunks concatenate and resume byte-identically
    with VideoWriter(path, fps, crf=CRF, preset="veryfast", gop=GOP_SIZE, backend="pyav",
                     overwrite=True) as writer:
        for frame in frames:
            writer.write(frame)


def concat_chunks(chunks: list[Path], out_path: Path, *, overwrite: bool) -> int:
    """Remux the packets of ``chunks`` (in order) into one mp4; returns the frame count."""
    if not chunks:
        raise ValueError("no chunks to concatenate")
    frames = 0
    with atomic_path(out_path, overwrite=overwrite) as tmp:
        with av.open(str(chunks[0])) as first, av.open(str(tmp), "w", format="mp4") as out:
            template = first.streams.video[0]
            ostream = out.add_stream_from_template(template)
            offset = 0  # in the chunks' time base (identical for every chunk)
            for path in chunks:
                with av.open(str(path)) as inp:
                    stream = inp.streams.video[0]
                    if stream.time_base != template.time_base:
                        raise ValueError(f"{path}: time base {stream.time_base} differs from "
                                         f"{template.time_base}")
                    if stream.codec_context.extradata != template.codec_context.extradata:
                        # the output carries the first chunk's SPS/PPS; other parameter sets would
                        # leave this chunk's frames undecodable
                        raise ValueError(f"{path}: H.264 parameter sets (SPS/PPS) differ from {chunks[0]}")
                    step = int(round(1 / (stream.average_rate * stream.time_base)))
                    n = 0
                    for packet in inp.demux(stream):
                        if packet.dts is None:  # flush marker
                            continue
                        packet.pts += offset
                        packet.dts += offset
                        packet.stream = ostream
                        out.mux(packet)
                        n += 1
                    offset += n * step
                    frames += n
    return frames


class ChunkWriter:
    """Chunk files under ``<out>/.rollout``: ``chunk_000000.mp4`` (+ ``debug_*.mp4``) and
    ``boxes_000000.json`` (the scenario frames and ego motion of each chunk's output frames)."""

    def __init__(self, out_dir: str | Path, *, fps: float, debug: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.work = self.out_dir / WORK_DIR
        self.fps, self.debug = float(fps), bool(debug)

    def _path(self, kind: str, index: int, ext: str) -> Path:
        return self.work / f"{kind}_{index:06d}.{ext}"

    def write(self, index: int, frames: np.ndarray, boxes: ScenarioFrames, first_frame: int,
              ego: EgoSeries | None = None) -> None:
        """Encode chunk ``index`` holding output frames ``first_frame ..``; boxes (and the
        commanded ego motion, None = unknown) first so that a chunk's video exists only when its
        annotations do."""
        if len(boxes.boxes) != len(frames) or (ego is not None and len(ego) != len(frames)):
            raise ValueError(f"{len(frames)} frames but {len(boxes.boxes)} box frames and "
                             f"{None if ego is None else len(ego)} ego frames")
        self.work.mkdir(parents=True, exist_ok=True)
        record = {"first_frame": first_frame, "height": int(frames.shape[1]),
                  "width": int(frames.shape[2]), "boxes": boxes.boxes.round(6).tolist(),
                  "classes": boxes.classes.tolist(), "track_ids": boxes.track_ids.tolist()}
        if ego is not None:  # the clip format's precision: speed and yaw rate to 4 and 5 decimals
            record["ego"] = [{"speed": round(float(s), 4), "yaw_rate": round(float(y), 5)} if k else None
                             for s, y, k in zip(ego.speed, ego.yaw_rate, ego.known)]
        atomic_write_text(self._path("boxes", index, "json"), json.dumps(record) + "\n")
        if self.debug:
            drawn = np.stack([draw_boxes(f, b, c, t) for f, b, c, t in
                              zip(frames, boxes.boxes, boxes.classes, boxes.track_ids)])
            encode_chunk(self._path("debug", index, "mp4"), drawn, self.fps)
        encode_chunk(self._path("chunk", index, "mp4"), frames, self.fps)

    def discard_from(self, index: int) -> None:
        """Remove chunk files ``>= index`` left by a killed run (they are re-made identically)."""
        if not self.work.is_dir():
            return
        for p in self.work.iterdir():
            stem = p.stem.split("_")
            if len(stem) == 2 and stem[1].isdigit() and int(stem[1]) >= index:
                p.unlink()

    def chunk_paths(self, kind: str, count: int) -> list[Path]:
        ext = "json" if kind == "boxes" else "mp4"
        return [self._path(kind, i, ext) for i in range(count)]

    def iter_box_records(self, count: int) -> Iterator[dict[str, Any]]:
        for p in self.chunk_paths("boxes", count):
            yield json.loads(p.read_text())

    def remove_work(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def finalize_outputs(writer: ChunkWriter, count: int, *, overwrite: bool) -> int:
    """Concatenate the chunks into ``frames.mp4`` (+ ``debug.mp4``); returns frames written."""
    n = concat_chunks(writer.chunk_paths("chunk", count), writer.out_dir / VIDEO_NAME,
                      overwrite=overwrite)
    if writer.debug:
        concat_chunks(writer.chunk_paths("debug", count), writer.out_dir / DEBUG_NAME,
                      overwrite=overwrite)
    return n


def output_exists(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return out.exists() and any(os.scandir(out))


def _annotation_rows(writer: ChunkWriter, count: int) -> Iterator[str]:
    """One clip-format annotation per output frame, read chunk by chunk (constant memory)."""
    for rec in writer.iter_box_records(count):
        egos = rec.get("ego") or [None] * len(rec["boxes"])
        for boxes, classes, ids, ego in zip(rec["boxes"], rec["classes"], rec["track_ids"], egos):
            keep = [i for i, c in enumerate(classes) if c != L.PAD_CLASS]
            row = {"boxes": [boxes[i] for i in keep], "classes": [classes[i] for i in keep],
                   "track_ids": [ids[i] for i in keep], "visibility": [1.0] * len(keep)}
            if ego is not None:
                row["ego"] = ego
            yield json.dumps(row)


def write_clip_json(out_dir: Path, writer: ChunkWriter, count: int, *, fps: float, num_frames: int,
                    scenario: Scenario, metadata: dict[str, Any]) -> Path:
    """``clip.json`` (``drivesim.clip/1``) for the rollout: the boxes, ego motion and labels
    actually used."""
    first = next(writer.iter_box_records(1))
    labels = {"daynight": L.DAYNIGHT_NAMES[scenario.daynight], "crowd": L.CROWD_NAMES[scenario.crowd],
              "source": "rollout", "scenario": scenario.describe(), **metadata}
    head = {"schema": SCHEMA, "clip_id": out_dir.name, "fps": fps, "height": first["height"],
            "width": first["width"], "num_frames": num_frames,
            "frames": {"format": "mp4", "path": VIDEO_NAME}, "labels": labels}
    path = out_dir / CLIP_JSON
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(head, indent=2)[:-2] + ',\n  "annotations": [\n')
        for i, row in enumerate(_annotation_rows(writer, count)):
            fh.write((",\n    " if i else "    ") + row)
        fh.write("\n  ]\n}\n")
    return path
