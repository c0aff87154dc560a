"""Test-only callbacks (importable by `drivesim fit` subprocesses through PYTHONPATH).

``BatchProbe`` records, per rank, a fingerprint of every training sample: (clip_id, checksum
of its pixels or latents); two ranks seeing the same sample in one epoch would show the same
fingerprint. ``WeightsProbe`` records a digest of every weight at the end of training."""

import hashlib
import json
from pathlib import Path

import torch
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


class WeightsProbe(Callback):
    """At the end of training, each rank writes a SHA-256 of every tensor of the module's state
    dict (parameters and buffers) to ``{path}.rank{r}.json``: DDP keeps the replicas identical
    only if every rank applied the same averaged update, so the digests must agree bit for bit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer, pl_module):
        digests, scalars = {}, {}
        params = {name for name, _ in pl_module.named_parameters()}
        for name, tensor in sorted(pl_module.state_dict().items()):
            flat = tensor.detach().cpu().contiguous().reshape(-1)     # 0-d buffers too
            digests[name] = hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()
            if flat.numel() == 1 and flat.is_floating_point():
                scalars[name] = float(flat[0])
        out = Path(f"{self.path}.rank{trainer.global_rank}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rank": trainer.global_rank, "step": trainer.global_step,
                                   "tensors": digests, "parameters": sorted(params & set(digests)),
                                   "scalars": scalars}))
