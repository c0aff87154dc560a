"""UpsamplerModule: training inputs (patches, low-res input, augmentation, context), seeded
randomness, a short fit lowers the loss and writes a loadable model file, validation PSNR."""

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, Dataset

from drivesim.inference import load_model
from drivesim.inference.upsampling import UpsamplerSampler, upsample_clip
from drivesim.models.model_files import read_model_file, save_model_file
from drivesim.models.upsampler import (
    UPSAMPLER_KIND,
    VideoUpsampler,
    downsample_frames,
    upsample_input,
)
from drivesim.training.upsampler_module import UpsamplerModule, psnr, random_patches
from drivesim.utils.io import DriveSimInputError

NET = dict(scale=2, pixel_unshuffle=2, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
           num_head_channels=8, norm_groups=8, context_channels=8, max_frames=4, max_aug_level=20)
H, W, T = 16, 32, 4


def module(net=None, **overrides) -> UpsamplerModule:
    torch.manual_seed(0)
    kwargs = dict(aug_level=10, patch_size=(8, 16), warmup_steps=0, lr=2e-3, num_val_samples=1,
                  val_sample_steps=2, context_probs=(0.5, 0.0, 0.5))
    return UpsamplerModule(VideoUpsampler(**{**NET, **(net or {})}), **{**kwargs, **overrides})


def clips(b=4, seed=0):
    """Smooth moving stripes in [-1, 1]: learnable detail above the low-res Nyquist."""
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(b, 1, 1, 1, 1, generator=g) * 6.28
    t = torch.arange(T).float()[None, :, None, None, None]
    x = torch.arange(W).float()[None, None, None, None, :]
    y = torch.arange(H).float()[None, None, None, :, None]
    colour = torch.tensor([1.0, 0.5, -0.5])[None, None, :, None, None]
    return (0.8 * torch.sin(1.3 * x + 0.4 * y + 0.5 * t + phase) * colour).expand(b, T, 3, H, W).contiguous()


class Clips(Dataset):
    def __init__(self, n=64):
        self.video = clips(8)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"video": self.video[i % 8], "fps": torch.tensor(8.0)}


def test_patches_share_one_aligned_crop_per_clip():
    video = torch.rand(3, T, 3, H, W)
    up = torch.rand(3, T, 3, H, W)
    a, b = random_patches([video, up], (8, 16), 4, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (3, T, 3, 8, 16)
    for i in range(3):
        hits = [(y, x) for y in range(0, H - 7, 4) for x in range(0, W - 15, 4)
                if torch.equal(video[i, :, :, y:y + 8, x:x + 16], a[i])]
        assert len(hits) == 1  # one aligned crop, the same for every frame of the clip
        y, x = hits[0]
        assert torch.equal(b[i], up[i, :, :, y:y + 8, x:x + 16])
    with pytest.raises(DriveSimInputError, match="patch"):
        random_patches([video], (32, 16), 4, None)


def test_training_input_is_the_upsampled_area_downsample():
    m = module(patch_size=None)
    video = clips(2)
    x0, up = m.training_pair(video, torch.Generator().manual_seed(0))
    assert torch.equal(x0, video)
    torch.testing.assert_close(up, upsample_input(downsample_frames(video, 2), 2))


@pytest.mark.parametrize("residual_scale", [0.0, 4.0])
def test_network_gets_lowres_level_and_clean_context(monkeypatch, residual_scale):
    m = module({"residual_scale": residual_scale}, patch_size=None, context_probs=(0.0, 0.0, 1.0), image_prob=0.0)
    seen = {}
    original = m.upsampler.forward

    def spy(x_t, t, cond):
        seen.update(x_t=x_t, cond=cond)
        return original(x_t, t, cond)

    monkeypatch.setattr(m.upsampler, "forward", spy)
    video = clips(2)
    m.compute_loss({"video": video}, torch.Generator().manual_seed(0))
    cond = seen["cond"]
    assert cond.lowres.shape == seen["x_t"].shape == video.shape
    assert cond.regime.dtype == torch.long and cond.regime.shape == (2,)
    assert bool(((cond.regime >= 0) & (cond.regime <= 20)).all())
    assert torch.equal(cond.context_mask, torch.tensor([[1.0, 1, 0, 0]] * 2))
    target = m.upsampler.to_diffusion(video, upsample_input(downsample_frames(video, 2), 2))
    if residual_scale:
        torch.testing.assert_close(target, residual_scale * (video - upsample_input(downsample_frames(video, 2), 2)))
    assert torch.equal(cond.context[:, :2], target[:, :2]) and not cond.context[:, 2:].any()


def test_per_frame_steps_switch_the_temporal_layers_off(monkeypatch):
    m = module(image_prob=0.999)
    modes = []
    original = m.upsampler.forward
    monkeypatch.setattr(m.upsampler, "forward", lambda x, t, c: modes.append((m.upsampler.image_only, c.context))
                        or original(x, t, c))
    m.compute_loss({"video": clips(2)}, torch.Generator().manual_seed(0))
    m.compute_loss({"video": clips(2)}, torch.Generator().manual_seed(0), train=False)
    assert modes[0] == (True, None)      # per-frame step: temporal layers off, no context
    assert modes[1][0] is False          # validation never runs per-frame
    assert m.upsampler.image_only is False


def test_loss_randomness_is_seeded():
    m = module()
    batch = {"video": clips(4)}
    a = m.compute_loss(batch, torch.Generator().manual_seed(5))
    b = m.compute_loss(batch, torch.Generator().manual_seed(5))
    c = m.compute_loss(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, field", [
    ({"aug_level": 21}, "aug_level"),
    ({"patch_size": (6, 16)}, "patch_size"),
    ({"image_prob": 1.0}, "image_prob"),
    ({"num_train_steps": 20}, "num_train_steps"),
    ({"compile_mode": "fastest"}, "compile_mode"),
])
def test_bad_config_is_refused(kwargs, field):
    with pytest.raises(DriveSimInputError) as err:
        module(**kwargs)
    assert err.value.field == field


def mean_loss(m, batch):
    m.eval()
    with torch.no_grad():
        losses = [float(m.compute_loss(batch, torch.Generator().manual_seed(s), train=False)) for s in range(8)]
    m.train()
    return sum(losses) / len(losses)


def test_short_fit_lowers_the_loss_and_writes_the_model_file(tmp_path):
    m = module(model_file=str(tmp_path / "up.safetensors"))
    batch = {"video": clips(8)}
    before = mean_loss(m, batch)
    trainer = Trainer(max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                      num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(m, DataLoader(Clips(), batch_size=4), DataLoader(Clips(4), batch_size=2))
    after = mean_loss(m, batch)
    assert after < 0.85 * before, (before, after)
    metrics = trainer.callback_metrics
    assert {"val/psnr", "val/psnr_bicubic"} <= set(metrics)
    record = load_model(tmp_path / "up.safetensors", "upsampler")
    net, hp = record.network, record.hparams
    assert hp["fps"] == 8.0 and hp["num_frames"] == T and hp["aug_level"] == 10 and hp["scale"] == 2
    assert hp["schedule"]["kind"] == "cosine"
    for key, value in net.state_dict().items():
        assert torch.equal(value, m.upsampler.state_dict()[key])


def test_checkpoint_carries_the_model_file(tmp_path):
    m = module()
    checkpoint = {"state_dict": {f"upsampler.{k}": v for k, v in m.upsampler.state_dict().items()}}
    m.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")
    kind, hparams, state = read_model_file(tmp_path / "last.ckpt")
    assert kind == UPSAMPLER_KIND and hparams["network"] == m.upsampler.config
    net = load_model(tmp_path / "last.ckpt", "upsampler").network
    assert set(net.state_dict()) == set(state)


def test_init_from_continues_another_runs_upsampler(tmp_path):
    """``drivesim train --init RUN``: the network and weights of the other run's upsampler file, in
    place of the config's block; diffusion settings that differ from the file's are refused."""
    trained = module()
    with torch.no_grad():
        for p in trained.upsampler.parameters():
            p.add_(0.01)  # away from any init
    path = save_model_file(tmp_path / "upsampler.safetensors", UPSAMPLER_KIND, trained.model_hparams(),
                           trained.upsampler.state_dict())
    continued = UpsamplerModule(init_from=str(path), aug_level=10, patch_size=(8, 16))
    assert continued.upsampler.config == trained.upsampler.config and continued.upsampler.training
    for key, value in trained.upsampler.state_dict().items():
        assert torch.equal(continued.upsampler.state_dict()[key], value), key
    with pytest.raises(DriveSimInputError, match="field 'prediction'.*trained with prediction='v'"):
        UpsamplerModule(init_from=str(path), prediction="eps", aug_level=10, patch_size=(8, 16))
    with pytest.raises(DriveSimInputError, match="field 'schedule'"):
        UpsamplerModule(init_from=str(path), schedule="linear", aug_level=10, patch_size=(8, 16))
    with pytest.raises(DriveSimInputError, match="field 'upsampler'.*twice"):
        UpsamplerModule(VideoUpsampler(**NET), init_from=str(path), aug_level=10, patch_size=(8, 16))
    with pytest.raises(DriveSimInputError, match="field 'upsampler'.*or init_from"):
        UpsamplerModule(aug_level=10, patch_size=(8, 16))


def test_upsample_clip_chunks_reimpose_context_and_are_seeded():
    m = module()
    record = m.inference_record()
    low = downsample_frames(clips(1), 2)
    a, b, c = (upsample_clip(record, low, steps=2, chunk=3, context=1, generator=torch.Generator().manual_seed(s))
               for s in (4, 4, 5))
    assert a.shape == (1, T, 3, H, W) and torch.equal(a, b) and not torch.equal(a, c)
    assert psnr(a, a).item() == pytest.approx(100.0)


@pytest.mark.parametrize("residual_scale", [0.0, 8.0])
def test_upsampler_sampler_returns_frames_with_the_context_reimposed(residual_scale):
    m = module({"residual_scale": residual_scale})
    video = clips(1)
    sample_chunk = UpsamplerSampler(m.inference_record(), steps=2)
    out = sample_chunk(downsample_frames(video, 2), video[:, :2], torch.Generator().manual_seed(0))
    assert out.shape == video.shape
    torch.testing.assert_close(out[:, :2], video[:, :2], atol=1e-5, rtol=0)
    assert not torch.allclose(out[:, 2:], video[:, 2:], atol=1e-2)


def test_compiled_training_is_one_graph_per_mode_and_equals_eager(monkeypatch):
    """compile=True compiles the network's UNet in place; a training step (video and per-frame)
    and a validation step trace without graph breaks, one graph each, and give eager's loss."""
    import torch._dynamo as dynamo
    from torch._dynamo.testing import CompileCounter

    import drivesim.training.upsampler_module as upsampler_module
    from drivesim.models.compile import compile_network

    counter = CompileCounter()
    compiled_nets = []

    def counting_compile(net, mode):
        compiled_nets.append((net, mode))
        return compile_network(net, mode, backend=counter)

    monkeypatch.setattr(upsampler_module, "compile_network", counting_compile)
    dynamo.reset()
    dynamo.utils.counters.clear()
    eager, compiled = module(image_prob=0.5), module(image_prob=0.5, compile=True)
    assert compiled_nets == [(compiled.upsampler, "default")]
    assert compiled.upsampler.state_dict().keys() == eager.upsampler.state_dict().keys()
    batch = {"video": clips(2)}
    for seed, train in ((0, True), (1, True), (2, True), (0, False)):
        want = eager.compute_loss(batch, torch.Generator().manual_seed(seed), train=train)
        got = compiled.compute_loss(batch, torch.Generator().manual_seed(seed), train=train)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert dict(dynamo.utils.counters["graph_break"]) == {}
    # seeds 1 and 2 draw per-frame steps (temporal layers off), 0 a video step: distinct graphs
    assert 2 <= counter.frame_count <= 4
