"""``torch.compile`` for every network, one place for the modes and their checks.

``compile_network(module, mode)`` compiles ``module`` in place (``nn.Module.compile``), so
state-dict keys stay unchanged and model files written after training load into an eager
network. ``reduce-overhead`` records CUDA graphs and is refused off CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


def check_compile_mode(mode: str, device: torch.device | str | None = None) -> str:
    """``mode`` if it is a known compile mode usable on ``device``; ValueError otherwise."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode: expected one of {COMPILE_MODES}, got {mode!r}")
    if mode == "reduce-overhead" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"compile_mode 'reduce-overhead' records CUDA graphs; the device is {device}")
    return mode


def compile_network(module: nn.Module, mode: str = "default", *, dynamic: bool | None = False) -> nn.Module:
    """Compile ``module`` in place with ``mode`` and return it (``dynamic=False``: one graph per
    input shape, the fixed shapes of training windows and rollout segments)."""
    check_compile_mode(mode)
    module.compile(mode=None if mode == "default" else mode, dynamic=dynamic)
    return module
