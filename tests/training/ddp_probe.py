"""A test-only callback (importable by `drivesim fit` subprocesses through PYTHONPATH) that
records, per rank, a fingerprint of every training sample: (clip_id, checksum of its pixels
or latents). Two ranks seeing the same sample in one epoch would show the same fingerprint."""

import json
from pathlib import Path

from lightning.pytorch import Callback


class BatchProbe(Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = batch["video"] if "video" in batch else batch["latents"]
        sums = x.flatten(1).double().sum(1).tolist()
        out = Path(f"{self.path}.rank{trainer.global_rank}.jsonl")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as fh:
            for cid, s in zip(batch["clip_id"], sums):
                fh.write(json.dumps({"epoch": trainer.current_epoch, "rank": trainer.global_rank,
                                     "sample": f"{cid}:{s:.6e}"}) + "\n")
