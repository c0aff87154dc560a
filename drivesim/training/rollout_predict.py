"""Batch generation of scenario rollouts with Lightning's ``predict`` loop.

One item = one rollout (``name``, ``scenario``, ``seed``, ``daynight``, optional ``seconds``),
read from a JSON-lines jobs file. ``predict`` shards items over processes / GPUs / nodes
without repeating any (Lightning's unrepeated sampler for prediction), each rank runs its
rollouts with the same loop as ``drivesim rollout``, and :class:`RolloutResultWriter` records
one result line per rollout in ``<out_root>/results/rank<R>.jsonl``::

    drivesim predict --model drivesim.training.rollout_predict.RolloutPredictModule \
        --model.video_ckpt V --model.ae_ckpt A --model.image_ckpt I --model.out_root runs/batch \
        --data drivesim.training.rollout_predict.RolloutJobsDataModule --data.jobs jobs.jsonl \
        --trainer.devices 8 --trainer.callbacks+=drivesim.training.rollout_predict.RolloutResultWriter \
        --trainer.callbacks.out_root runs/batch
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from drivesim.api import Simulator
from drivesim.inference.run_folder import resolve_run
from drivesim.rollout.config import RolloutConfig
from drivesim.rollout.writer import output_exists
from drivesim.utils.io import DriveSimInputError, atomic_write_text

JOB_KEYS = {"name", "scenario", "seed", "daynight", "seconds"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def read_jobs(path: str | Path) -> list[dict[str, Any]]:
    """Validated jobs: unique safe ``name``s, known keys; errors name file, line and field."""
    path, jobs, seen = Path(path), [], set()
    if not path.is_file():
        raise DriveSimInputError("jobs file not found", path=path)
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as err:
            raise DriveSimInputError(f"malformed JSON: {err.msg}", path=path, field=f"line {no}") from err
        if not isinstance(job, dict) or set(job) - JOB_KEYS:
            raise DriveSimInputError(f"a job is an object with keys {sorted(JOB_KEYS)}", path=path,
                                     field=f"line {no}", value=job)
        name = job.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name) or name in seen:
            raise DriveSimInputError("name must be a unique [A-Za-z0-9_.-]+ string", path=path,
                                     field=f"line {no}.name", value=name)
        seen.add(name)
        jobs.append(job)
    if not jobs:
        raise DriveSimInputError("no jobs", path=path)
    return jobs


class RolloutJobs(Dataset):
    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.jobs[i])


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch  # jobs are plain dicts: no tensor collation


class RolloutJobsDataModule(LightningDataModule):
    """The jobs file as a predict dataloader (one rollout per item)."""

    def __init__(self, jobs: str, batch_size: int = 1) -> None:
        super().__init__()
        self.jobs_path, self.batch_size = jobs, batch_size

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RolloutJobs(read_jobs(self.jobs_path)), batch_size=self.batch_size,
                          shuffle=False, collate_fn=_as_list)


class RolloutPredictModule(LightningModule):
    """Glue: ``predict_step`` runs one rollout per job into ``out_root/<name>``.

    ``video_ckpt`` / ``ae_ckpt`` / ``image_ckpt`` / ``interp_ckpt`` (or ``run``, a run folder)
    name the models; the other constructor arguments are shared :class:`RolloutConfig`
    options, and a job sets scenario, seed, day/night and (optionally) seconds. Models are
    loaded once per process as a :class:`drivesim.Simulator` (nothing to train, nothing for
    DDP to wrap). Existing outputs are skipped unless ``overwrite``; ``resume`` continues
    interrupted ones.
    """

    def __init__(self, out_root: str, video_ckpt: str | None = None, ae_ckpt: str | None = None,
                 image_ckpt: str | None = None, interp_ckpt: str | None = None, run: str | None = None,
                 seconds: float = 120.0, fps: float | None = None, window: int | None = None,
                 steps: int = 20, guidance_context: float = 1.5, guidance_schedule: str = "taper",
                 guidance_boxes: float = 1.0, guidance_labels: float = 1.0, guidance_ego: float = 1.0,
                 size: str | None = None,
                 start: str = "auto", save_every: int = 2, overwrite: bool = False, resume: bool = False,
                 debug_video: bool = False) -> None:
        super().__init__()
        self.files = {"autoencoder": ae_ckpt, "video": video_ckpt, "image": image_ckpt,
                      "interpolation": interp_ckpt}
        self.run_dir = run
        self.config = RolloutConfig(seconds=seconds, fps=fps, window=window, steps=steps,
                                    guidance_context=guidance_context, guidance_schedule=guidance_schedule,
                                    guidance_boxes=guidance_boxes, guidance_labels=guidance_labels,
                                    guidance_ego=guidance_ego, size=size,
                                    start=start, save_every=save_every, debug_video=debug_video)
        self.out_root, self.overwrite, self.resume = Path(out_root), overwrite, resume
        self._sim: Simulator | None = None

    def _simulator(self) -> Simulator:
        if self._sim is None:
            files = dict(resolve_run(self.run_dir)) if self.run_dir else {}
            files.update({k: v for k, v in self.files.items() if v})
            if "video" not in files or "autoencoder" not in files:
                raise DriveSimInputError("video_ckpt and ae_ckpt (or run) are required", field="video_ckpt")
            self._sim = Simulator.from_files(**files)
        return self._sim

    def job_config(self, job: dict[str, Any]) -> RolloutConfig:
        """The shared options with the job's seed, day/night and seconds."""
        extra = {"seed": int(job.get("seed", 0)), "daynight": job.get("daynight")}
        if "seconds" in job:
            extra["seconds"] = float(job["seconds"])
        return replace(self.config, **extra)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        results = []
        for job in batch:
            out = self.out_root / job["name"]
            if output_exists(out) and not (self.overwrite or self.resume):
                results.append({"name": job["name"], "status": "exists", "out": str(out),
                                "rank": self.global_rank})
                continue
            res = self._simulator().write_rollout(out, job["scenario"], self.job_config(job), resume=self.resume,
                                                  overwrite=self.overwrite, progress=False)
            results.append({"name": job["name"], "status": "done", "out": str(out),
                            "frames": res.num_frames, "rank": self.global_rank})
        return results


class RolloutResultWriter(BasePredictionWriter):
    """Appends each rank's results to ``<out_root>/results/rank<R>.jsonl`` (rewritten
    atomically after every batch, so a killed job leaves complete lines only)."""

    def __init__(self, out_root: str) -> None:
        super().__init__(write_interval="batch")
        self.out_root = Path(out_root)
        self._lines: list[str] = []

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._lines.extend(json.dumps(r, sort_keys=True) for r in prediction)
        path = self.out_root / "results" / f"rank{trainer.global_rank}.jsonl"
        atomic_write_text(path, "".join(line + "\n" for line in self._lines))
