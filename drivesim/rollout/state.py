"""Resume state of a rollout, saved atomically every few segments.

The state holds everything the loop needs to continue exactly where it stopped: the next
segment index, the context latents (last S key frames), the latent tail kept for
overlapping decoding, the last key latent (interpolation carry), the generator state and
the writer position (chunks written, frames written). A fingerprint of the checkpoints,
the arguments and the scenario guards against resuming a different rollout.

The file is a plain ``torch.save`` of tensors, ints and strings, loaded with
``weights_only=True`` (no pickled code).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from drivesim.utils.io import DriveSimInputError, atomic_path

# 2: the chunk writer's x264 GOP size is a constant. A version-1 folder's chunks carry other encoder
# settings (and a 1-frame chunk 0 an intra-only SPS), so resuming one would not give the bytes of a
# fresh run; it is refused, and --overwrite starts over.
STATE_VERSION = 2


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (checkpoints go into the fingerprint by content)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(checkpoints: dict[str, str | Path | None], args: dict[str, Any],
                scenario: dict[str, Any]) -> str:
    """sha256 over checkpoint contents, output-affecting arguments and the scenario identity."""
    doc = {
        "checkpoints": {k: (file_digest(v) if v is not None else None)
                        for k, v in sorted(checkpoints.items())},
        "args": args,
        "scenario": scenario,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class RolloutState:
    """Where the loop stands after ``segments_done`` segments."""

    fingerprint: str
    segments_done: int
    keys_done: int  # key frames generated so far (start frames included)
    frames_written: int  # output frames written to chunk files
    chunks_written: int
    context: torch.Tensor  # [B, S, C, h, w] last key latents (next segment's context)
    decode_tail: torch.Tensor  # [B, o, C, h, w] latents kept for overlapping decoding
    generator_state: torch.Tensor  # torch.Generator.get_state()
    # the streaming upsampler's buffers (pending low-res frames, low/hi context), None without one
    upsampler: dict[str, torch.Tensor | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint,
                "segments_done": self.segments_done, "keys_done": self.keys_done,
                "frames_written": self.frames_written, "chunks_written": self.chunks_written,
                "context": self.context.detach().cpu().clone(),
                "decode_tail": self.decode_tail.detach().cpu().clone(),
                "generator_state": self.generator_state.clone(),
                "upsampler": None if self.upsampler is None else
                {k: (None if v is None else v.detach().cpu().clone()) for k, v in self.upsampler.items()}}


def save_state(path: str | Path, state: RolloutState) -> None:
    """Write the state atomically (a kill mid-write leaves the previous state intact)."""
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(state.to_dict(), tmp)


def load_state(path: str | Path, expected_fingerprint: str) -> RolloutState:
    """Load and check a state file; mismatching fingerprints raise a clear error."""
    path = Path(path)
    if not path.is_file():
        raise DriveSimInputError("no resume state here; run without --resume", path=path)
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which file
        raise DriveSimInputError(f"unreadable resume state: {err}", path=path) from err
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise DriveSimInputError(f"unsupported resume state (expected version {STATE_VERSION}; written by "
                                 "another drivesim version): start over with --overwrite",
                                 path=path, field="version",
                                 value=doc.get("version") if isinstance(doc, dict) else doc)
    if doc["fingerprint"] != expected_fingerprint:
        raise DriveSimInputError(
            "resume state was written by a different rollout (checkpoints, arguments or "
            f"scenario differ; expected {expected_fingerprint[:12]}); rerun with the original "
            "arguments, or start over with --overwrite", path=path, field="fingerprint",
            value=doc["fingerprint"][:12])
    return RolloutState(fingerprint=doc["fingerprint"], segments_done=int(doc["segments_done"]),
                        keys_done=int(doc["keys_done"]), frames_written=int(doc["frames_written"]),
                        chunks_written=int(doc["chunks_written"]), context=doc["context"],
                        decode_tail=doc["decode_tail"], generator_state=doc["generator_state"],
                        upsampler=doc.get("upsampler"))
