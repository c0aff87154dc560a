import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from drivesim.training.callbacks import FiniteLossGuard, NonFiniteLossError


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
