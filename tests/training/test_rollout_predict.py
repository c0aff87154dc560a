"""Batch rollouts through Lightning predict on 2 CPU processes: every job exactly once."""

import json
import sys
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

sys.path.insert(0, str(Path(__file__).parents[1] / "rollout"))
from rollout_tiny_models import write_tiny_models

from drivesim.data.clip_format import read_clip
from drivesim.training.rollout_predict import (
    RolloutJobsDataModule,
    RolloutPredictModule,
    RolloutResultWriter,
    read_jobs,
)
from drivesim.utils.io import DriveSimInputError


def write_jobs(path, n):
    lines = [json.dumps({"name": f"job{i}", "scenario": "none", "seed": i,
                         "daynight": "night" if i % 2 else "day"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_predict(tmp_path, n, **trainer_kw):
    ckpts = write_tiny_models(tmp_path / "models")
    jobs = write_jobs(tmp_path / "jobs.jsonl", n)
    out = tmp_path / "batch"
    module = RolloutPredictModule(video_ckpt=str(ckpts["video"]), ae_ckpt=str(ckpts["ae"]),
                                  image_ckpt=str(ckpts["image"]), out_root=str(out), seconds=1.5,
                                  steps=1, size="16x32")
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, callbacks=[RolloutResultWriter(str(out))],
                      **trainer_kw)
    trainer.predict(module, datamodule=RolloutJobsDataModule(str(jobs)), return_predictions=False)
    results = [json.loads(line) for p in sorted((out / "results").glob("rank*.jsonl"))
               for line in p.read_text().splitlines()]
    assert sorted(r["name"] for r in results) == [f"job{i}" for i in range(n)]
    for i in range(n):
        clip = read_clip(out / f"job{i}")
        assert clip.num_frames == 6 and clip.labels["daynight"] == ("night" if i % 2 else "day")
    return results, module, out


def test_predict_writes_every_job_and_skips_existing(tmp_path):
    results, module, out = run_predict(tmp_path, 3, devices=1)
    assert all(r["status"] == "done" and r["rank"] == 0 for r in results)
    again = module.predict_step([{"name": "job1", "scenario": "none"}], 0)
    assert again[0]["status"] == "exists"  # nothing regenerated or overwritten


def test_two_processes_generate_every_job_exactly_once(tmp_path):
    # 5 jobs on 2 ranks: a padding (repeating) sampler would generate one job twice
    results, _, _ = run_predict(tmp_path, 5, devices=2, strategy="ddp_spawn")
    assert len(results) == 5
    assert {r["rank"] for r in results} == {0, 1} and all(r["status"] == "done" for r in results)


def test_bad_jobs_files(tmp_path):
    p = tmp_path / "jobs.jsonl"
    p.write_text('{"name": "a", "scenario": "none"}\n{"name": "a", "scenario": "none"}\n')
    with pytest.raises(DriveSimInputError, match="line 2.name"):
        read_jobs(p)
    p.write_text('{"name": "../x", "scenario": "none"}\n')
    with pytest.raises(DriveSimInputError, match="line 1.name"):
        read_jobs(p)
    p.write_text('{"name": "a", "scenario": "none", "colour": 1}\n')
    with pytest.raises(DriveSimInputError, match="line 1"):
        read_jobs(p)
