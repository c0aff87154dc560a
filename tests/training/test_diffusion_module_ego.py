"""LatentDiffusionModule with ego-motion conditioning: the ego encoder trains in the video stage
(spatial layers frozen), ego comes from the batch, drop_ego is the classifier-free dropout."""

import pytest
import torch

from drivesim.models.model_files import save_model_file
from drivesim.models.unet import UNet, parameter_group
from drivesim.training.diffusion_module import UNET_KIND, LatentDiffusionModule
from drivesim.training.stage_networks import TemporalLayers
from drivesim.utils.io import DriveSimInputError

TINY = dict(in_channels=4, out_channels=4, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(2,), num_head_channels=8, norm_groups=8, token_dim=16, max_boxes=4,
            box_fourier_freqs=2)
LAYERS = dict(use_context=True, context_channels=8, max_frames=6)


def ego_batch(b=4, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(b, t, 4, 8, 16, generator=g), "daynight": torch.arange(b) % 2,
            "crowd": torch.ones(b, dtype=torch.long), "fps": torch.full((b,), 2.0),
            "ego_speed": torch.rand(b, t, generator=g) * 15, "ego_yaw_rate": torch.randn(b, t, generator=g) * 0.1,
            "ego_known": torch.ones(b, t, dtype=torch.bool)}


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet(**TINY)
    with torch.no_grad():  # a trained image model: its zero-initialised output conv would stop every gradient
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("image") / "image.pt"
    return save_model_file(path, UNET_KIND, {"unet": unet.config}, unet.state_dict())


def video(image_file, **kw):
    layers = TemporalLayers(**LAYERS, use_ego=kw.pop("use_ego", True))
    return LatentDiffusionModule(stage="video", init_from=str(image_file), temporal_layers=layers,
                                 num_val_samples=0, warmup_steps=0, **kw)


def test_video_stage_trains_the_ego_encoder_with_spatial_layers_frozen(image_file):
    module = video(image_file)
    trainable = {n for n, p in module.unet.named_parameters() if p.requires_grad}
    assert {n for n in trainable if parameter_group(n) == "ego"} == {
        "ego_encoder." + n for n, _ in module.unet.ego_encoder.named_parameters()}
    assert all(parameter_group(n) in ("temporal", "context", "ego") for n in trainable)
    opt = module.configure_optimizers()["optimizer"]
    assert {id(p) for g in opt.param_groups for p in g["params"]} >= {id(p) for p in module.unet.ego_encoder.parameters()}
    before = {n: p.detach().clone() for n, p in module.unet.named_parameters()}
    module.train()
    module.compute_loss(ego_batch(), True, torch.Generator().manual_seed(0)).backward()
    opt.step()
    after = dict(module.unet.named_parameters())
    assert not torch.equal(after["ego_encoder.to_emb.weight"], before["ego_encoder.to_emb.weight"])
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trainable)


def test_ego_from_the_batch_and_drop_ego(image_file):
    batch = ego_batch()
    z = batch["latents"]
    for p, want in ((1.0, [True] * 4), (0.0, [False] * 4)):
        cond = video(image_file, drop_ego=p).batch_conditioning(batch, z, True, torch.Generator().manual_seed(0))
        assert cond.drop_ego.tolist() == want and torch.equal(cond.ego_speed, batch["ego_speed"])
    module = video(image_file, drop_ego=0.5)
    flags = module.batch_conditioning(ego_batch(b=64), torch.zeros(64, 5, 4, 8, 16), True,
                                      torch.Generator().manual_seed(1)).drop_ego
    assert 16 < int(flags.sum()) < 48  # drawn per sample from the step generator
    assert module.batch_conditioning(batch, z, False).drop_ego is None  # no dropout outside training
    plain = video(image_file, use_ego=None)  # None: the image UNet's setting (no ego)
    assert plain.unet.ego_encoder is None
    assert plain.batch_conditioning(batch, z, True, torch.Generator().manual_seed(0)).drop_ego is None


def test_drop_ego_is_checked(image_file):
    with pytest.raises(DriveSimInputError, match="field 'drop_ego', value 1.5"):
        video(image_file, drop_ego=1.5)
