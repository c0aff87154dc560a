"""``torch.compile`` for every network, one place for the modes and their checks.

``compile_network(module, mode)`` compiles ``module`` in place (``nn.Module.compile``), so
state-dict keys stay unchanged and model files written after training load into an eager
network. Each network's forward traces into one graph (no graph breaks; the UNet's blocks
inline into it), and shapes are static (``dynamic=False``): one compilation per input shape,
per train / eval mode and per grad / no-grad, which is what training windows and rollout
segments give. ``reduce-overhead`` records CUDA graphs and is refused off CUDA. The compile
path, its costs and when it pays off: docs/scaling.md, "Compiled training and sampling".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from drivesim.models.autoencoder import AutoencoderKL
from drivesim.models.upsampler import VideoUpsampler
from drivesim.utils.io import DriveSimInputError

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


def check_compile_mode(mode: str, device: torch.device | str | None = None) -> str:
    """``mode`` if it is a known compile mode usable on ``device``; DriveSimInputError (a
    ValueError) naming the field and value otherwise."""
    if mode not in COMPILE_MODES:
        raise DriveSimInputError(f"expected one of {COMPILE_MODES}", field="compile_mode", value=mode)
    if mode == "reduce-overhead" and device is not None and torch.device(device).type != "cuda":
        raise DriveSimInputError(f"'reduce-overhead' records CUDA graphs; the device is {device}",
                                 field="compile_mode", value=mode)
    return mode


class InductorBackend:
    """inductor with a compile mode's options; on CPU a training graph keeps PyTorch's own
    (NCHW) layouts instead of inductor's channels-last convolutions.

    Why: on CPU inductor turns every convolution channels-last. In inference that helps (the
    demo's video UNet at rollout shapes: 1.24x eager, 1.18x without it), but in a training step
    the layout conversions it adds (``aten::copy_`` 9% of the step, weight gradients copied back
    to the parameters' layout) made the mid image UNet's compiled step 0.91x eager; without
    them it is 1.10x (docs/scaling.md, "Compiled training and sampling").
    """

    def __init__(self, mode: str = "default") -> None:
        from torch._inductor import list_mode_options

        self.mode = check_compile_mode(mode)
        self.options = dict(list_mode_options(mode)) if mode != "default" else {}

    def config_patches(self, example_inputs: list) -> dict:
        """The inductor options for one graph: the mode's, plus NCHW layouts for a CPU training graph."""
        tensors = [t for t in example_inputs if isinstance(t, torch.Tensor)]
        on_cpu = bool(tensors) and all(t.device.type == "cpu" for t in tensors)
        training = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return self.options | ({"layout_optimization": False} if on_cpu and training else {})

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs, config_patches=self.config_patches(example_inputs))


def compile_targets(module: nn.Module) -> list[nn.Module]:
    """The submodules whose ``forward`` does a network's work, compiled in its place:

    - ``AutoencoderKL``: its ``encoder`` and ``decoder`` (``encode`` / ``decode`` /
      ``decode_chunked`` call them; the autoencoder's own ``forward`` is training-only);
    - ``VideoUpsampler``: its ``unet`` (the wrapper's input checks read tensor values, which
      would split the graph, and cost nothing next to the network);
    - anything else (``UNet``, a plain module): the module itself.
    """
    if isinstance(module, AutoencoderKL):
        return [module.encoder, module.decoder]
    if isinstance(module, VideoUpsampler):
        return [module.unet]
    return [module]


def compile_network(module: nn.Module, mode: str = "default", *, dynamic: bool | None = False,
                    backend: str | Callable = "inductor", device: torch.device | str | None = None
                    ) -> nn.Module:
    """Compile ``module``'s ``compile_targets`` in place with ``mode`` and return ``module``.

    ``dynamic=False``: one graph per input shape (the fixed shapes of training windows and
    rollout segments). ``backend="inductor"`` compiles through ``InductorBackend``; another (``"eager"``, ``"aot_eager"``, a
    counting backend) traces the same graph without generating code: how the tests check for
    graph breaks and recompiles; the modes are inductor's, so they need the inductor backend.
    ``device`` (optional) lets ``reduce-overhead`` be refused off CUDA before the first step.
    """
    check_compile_mode(mode, device)
    if backend != "inductor" and mode != "default":
        raise DriveSimInputError(f"compile modes are inductor options; backend {backend!r} takes "
                                 f"'default' only", field="compile_mode", value=mode)
    if backend == "inductor":
        backend = InductorBackend(mode)
    for target in compile_targets(module):
        target.compile(backend=backend, dynamic=dynamic)
    return module

