"""Tiny random real models written as model files, for end-to-end rollout tests."""

from pathlib import Path

import torch

from drivesim.models.autoencoder import AutoencoderKL
from drivesim.models.model_files import save_model_file
from drivesim.models.unet import UNet

UNET = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=8, norm_groups=8, token_dim=16, max_boxes=4, max_frames=8,
            context_channels=8)


def write_tiny_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """ae (temporal decoder, f=2 -> 16x32 frames from 8x16 latents), video and interpolation (both
    with ego-motion conditioning), image model files."""
    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    ae = AutoencoderKL(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, temporal_decoder=True)
    ae.set_scale_factor(1.0)
    paths = {"ae": root / "ae.pt", "video": root / "video.pt", "image": root / "image.pt",
             "interp": root / "interp.pt"}
    save_model_file(paths["ae"], "autoencoder", ae.hparams, ae.state_dict(), overwrite=True)
    schedule = {"num_steps": 1000}
    video = UNet(**UNET, temporal=True, use_context=True, use_ego=True)
    # temporal layers (and the ego embedding) are zero-initialised; perturb them so the video
    # model uses its context and the ego motion
    with torch.no_grad():
        for p in video.parameters():
            p.add_(0.02 * torch.randn_like(p))
    save_model_file(paths["video"], "ldm", {"unet": video.config, "schedule": schedule,
                                            "prediction": "v", "fps": 4.0, "num_frames": 6},
                    video.state_dict(), overwrite=True)
    image = UNet(**UNET)
    save_model_file(paths["image"], "ldm", {"unet": image.config, "schedule": schedule,
                                            "prediction": "v"}, image.state_dict(), overwrite=True)
    interp = UNet(**UNET, temporal=True, use_context=True, num_regimes=2, use_ego=True)
    save_model_file(paths["interp"], "ldm", {"unet": interp.config, "schedule": schedule,
                                             "prediction": "v"}, interp.state_dict(), overwrite=True)
    return paths
