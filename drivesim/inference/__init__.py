"""The inference path, without Lightning: one loader and one sampling call.

    from drivesim.inference import load_model, sample, guidance_scales
    video = load_model("runs/demo/video_ldm/model.safetensors", "prediction")
    latents = sample(video, cond, num_frames=8, latent_hw=(16, 32), steps=20,
                     scales=guidance_scales(cond, context=1.5), generator=torch.Generator().manual_seed(0))

``drivesim.rollout`` builds its segment samplers on these; ``drivesim.api.Simulator`` is the
public Python API on top.
"""

from drivesim.inference.loading import (
    LDM_KIND,
    ROLES,
    ModelRecord,
    diffusion_record,
    load_model,
    unet_role,
    upsampler_record,
)
from drivesim.inference.sampling import guidance_scales, sample

__all__ = ["LDM_KIND", "ROLES", "ModelRecord", "diffusion_record", "guidance_scales", "load_model", "sample",
           "unet_role", "upsampler_record"]
