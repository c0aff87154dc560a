"""drivesim: latent video diffusion models of driving scenes, used as a simulator."""

__version__ = "0.1.0"
