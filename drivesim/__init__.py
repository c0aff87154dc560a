"""drivesim: latent video diffusion models of driving scenes, used as a simulator.

    from drivesim import Simulator, RolloutConfig      # the Python API (docs/api.md)

The API is imported on first use, so ``import drivesim`` (and ``drivesim --help``) stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RolloutConfig", "RolloutFrame", "Simulator", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Simulator", "RolloutConfig", "RolloutFrame"):
        from drivesim import api

        return getattr(api, name)
    raise AttributeError(f"module 'drivesim' has no attribute {name!r}")
