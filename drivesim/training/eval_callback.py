"""Small-sample evaluation at the end of validation epochs (the video validation callback).

At the end of every ``every_n_epochs``-th validation epoch, rank 0 generates videos for the
conditioning of the first validation batch (``pl_module.predict_step``, which every
diffusion stage implements), scores them with ``drivesim.metrics.evaluate_videos`` against
``num_real`` clips of ``real`` and logs the scalars under ``val_eval/`` with a ``_n{N}``
suffix: these are small-sample numbers, meant for trends, not for papers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class VideoEvalCallback(Callback):
    """Score generated validation videos with the eval metrics (oracle by default)."""

    def __init__(self, real: str, real_split: str | None = "val", metrics: str = "oracle",
                 num_real: int = 4, every_n_epochs: int = 1, steps: int = 10,
                 oracle_path: str | None = None, i3d: str | None = None,
                 inception: str | None = None) -> None:
        self.real, self.real_split, self.metrics = real, real_split, metrics
        self.num_real, self.every_n_epochs, self.steps = num_real, every_n_epochs, steps
        self.oracle_path, self.i3d, self.inception = oracle_path, i3d, inception
        self._batch: dict[str, Any] | None = None
        self._scorers: dict[str, Any] | None = None

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and trainer.is_global_zero:
            self._batch = batch

    def _load_scorers(self) -> dict[str, Any]:
        from drivesim.metrics.extractors import load_torchscript
        from drivesim.metrics.oracle.model import load_or_train_oracle

        names = self.metrics.split(",")
        scorers: dict[str, Any] = {}
        if "oracle" in names:
            scorers["oracle"] = load_or_train_oracle(path=self.oracle_path)
        if "fvd" in names:
            scorers["i3d"] = load_torchscript("i3d", self.i3d)
        if "fid" in names:
            scorers["inception"] = load_torchscript("inception", self.inception)
        return scorers

    def evaluate(self, pl_module: LightningModule, batch: dict[str, Any]) -> dict[str, float]:
        from drivesim.metrics.evaluate import evaluate_videos, flat_metrics
        from drivesim.metrics.protocol import EvalProtocol
        from drivesim.metrics.sources import VideoSource, list_sources

        if self._scorers is None:
            self._scorers = self._load_scorers()
        with torch.no_grad():
            videos = pl_module.predict_step({**batch, "steps": self.steps})   # [B, T, 3, H, W]
        fps = float(batch["fps"][0]) if "fps" in batch else 1.0
        fake = []
        for i, video in enumerate(videos):
            classes = batch["box_classes"][i].cpu().numpy()
            fake.append(VideoSource.from_tensor(
                f"val{i}", video, fps, boxes=batch["boxes"][i].cpu().numpy().astype(np.float32),
                classes=classes, daynight=int(batch["daynight"][i])))
        real = [opener for _, opener in list_sources(Path(self.real), self.real_split)][: self.num_real]
        frames = int(videos.shape[1])
        protocol = EvalProtocol(num_clips=len(fake), frames_per_clip=frames, window_seconds=None,
                                oracle_real_frames=64, real_set=f"{self.real} split={self.real_split}")
        result = evaluate_videos(fake, real, metrics=self.metrics, protocol=protocol, **self._scorers)
        return {f"val_eval/{k}_n{len(fake)}": float(v) for k, v in flat_metrics(result).items()}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.sanity_checking or not trainer.is_global_zero or self._batch is None
                or (trainer.current_epoch + 1) % self.every_n_epochs):
            return
        scores = self.evaluate(pl_module, self._batch)
        self._batch = None
        if trainer.logger is not None:
            trainer.logger.log_metrics(scores, step=trainer.global_step)
        pl_module.print(" ".join(f"{k}={v:.4g}" for k, v in scores.items()))
