import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from drivesim.training.callbacks import (
    FiniteLossGuard,
    NonFiniteLossError,
    WarmupEMA,
    warmup_ema_avg_fn,
    warmup_ema_multi_avg_fn,
)


class _NaNAtStep(pl.LightningModule):
    def __init__(self, bad_step: int):
        super().__init__()
        self.bad_step = bad_step
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch[0]).pow(2).mean()
        if self.global_step == self.bad_step:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.ones(32, 1))
        return torch.utils.data.DataLoader(data, batch_size=1)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, save_last=True)
    trainer = pl.Trainer(max_steps=10, callbacks=[FiniteLossGuard(), ckpt], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(NonFiniteLossError, match="global step 3"):
        trainer.fit(_NaNAtStep(bad_step=3))
    last = torch.load(tmp_path / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 3  # saved after steps 1..3 finished; the NaN step never saved
    assert torch.isfinite(last["state_dict"]["w"]).all()


def test_warmup_ema_recurrence():
    avg_fn = warmup_ema_avg_fn(0.9, warmup=10.0)
    a, x = torch.tensor([1.0]), torch.tensor([3.0])
    # n = 0: d = 1/10 -> 0.1 * 1 + 0.9 * 3; n = 1000: d capped at 0.9
    torch.testing.assert_close(avg_fn(a, x, torch.tensor(0)), torch.tensor([2.8]))
    torch.testing.assert_close(avg_fn(a, x, torch.tensor(1000)), torch.tensor([1.2]))
    with pytest.raises(ValueError, match="decay"):
        warmup_ema_avg_fn(1.0)


def test_fused_warmup_ema_equals_the_per_tensor_form(generator):
    single, multi = warmup_ema_avg_fn(0.99, warmup=5.0), warmup_ema_multi_avg_fn(0.99, warmup=5.0)
    avg = [torch.randn(3, 4, generator=generator), torch.randn(7, generator=generator)]
    ref = [a.clone() for a in avg]
    for n in (0, 1, 3, 50, 2000):
        cur = [torch.randn_like(a) for a in avg]
        ref = [single(a, x, torch.tensor(n)) for a, x in zip(ref, cur)]
        multi(avg, cur, torch.tensor(n))  # in place
        for a, r in zip(avg, ref):
            torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-6)
    ints = [torch.tensor([1, 2])]
    multi(ints, [torch.tensor([5, 6])], torch.tensor(3))
    assert ints[0].tolist() == [5, 6]
    multi([], [], torch.tensor(0))
    with pytest.raises(ValueError, match="decay"):
        warmup_ema_multi_avg_fn(-0.1)


class _Drift(pl.LightningModule):
    """SGD on loss = -w: every step adds exactly lr to w, so the weight path is known."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return -(self.w * batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=1)


def test_warmup_ema_callback_exports_the_warm_started_average(tmp_path):
    module = _Drift()
    trainer = pl.Trainer(max_steps=50, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[WarmupEMA(decay=0.999)])
    trainer.fit(module)
    # reference: w_k = k after step k; AveragedModel copies the first value, then applies avg_fn
    avg_fn, avg = warmup_ema_avg_fn(0.999), None
    for k in range(1, 51):
        w = torch.tensor([float(k)])
        avg = w.clone() if avg is None else avg_fn(avg, w, torch.tensor(k - 1))
    torch.testing.assert_close(module.w.detach(), avg)
    assert float(module.w) > 35.0  # a plain 0.999 EMA would still sit near 2.2
