"""torch.compile of every network: one graph per forward (no graph breaks), one compilation
per input shape, compiled == eager within tolerance, compile-mode checks.

Graph-break and recompile tests trace with dynamo's explain / counting backends (no code
generation, seconds); the inductor agreement tests generate C++ and take minutes on CPU (slow).
"""

from dataclasses import replace

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter

from drivesim.diffusion.masks import context_mask_from_counts, interpolation_mask
from drivesim.models.autoencoder import AutoencoderKL
from drivesim.models.compile import (
    COMPILE_MODES,
    check_compile_mode,
    compile_network,
    compile_targets,
)
from drivesim.models.conditioning import Conditioning
from drivesim.models.unet import UNet
from drivesim.models.upsampler import VideoUpsampler
from drivesim.utils.io import DriveSimInputError

TINY = dict(in_channels=4, out_channels=4, model_channels=8, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(2,), num_head_channels=8, norm_groups=4,
            token_dim=8, max_boxes=3, box_fourier_freqs=2)
# every optional pathway that runs inside the forward, so a graph break in any of them shows
NETWORKS = {
    "image": dict(box_layout=True, use_track_ids=True),
    "prediction": dict(temporal=True, max_frames=4, use_context=True, context_channels=4,
                       context_input=True, box_layout=True, use_checkpoint=True, use_ego=True),
    "interpolation": dict(temporal=True, max_frames=4, use_context=True, context_channels=4,
                          num_regimes=2, temporal_position="relative", alpha_mode="scalar", use_ego=True),
}
AE_TINY = dict(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=4, patch_size=2)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def unet_inputs(kind: str, generator: torch.Generator, b: int = 2, h: int = 4, boxes: int = 3,
                context: int = 2) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """x [B,T,4,h,8], t [B], cond with boxes, labels, drop flags (+ ego, context / regime for video)."""
    frames = 1 if kind == "image" else 4
    x = torch.randn(b, frames, 4, h, 8, generator=generator)
    c = torch.rand(b, frames, boxes, 2, 2, generator=generator).sort(dim=-2).values
    cond = Conditioning(boxes=torch.stack([c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]], -1),
                        box_classes=torch.randint(0, 7, (b, frames, boxes), generator=generator),
                        box_ids=torch.randint(1, 9, (b, frames, boxes), generator=generator),
                        daynight=torch.randint(0, 3, (b,), generator=generator),
                        crowd=torch.randint(0, 4, (b,), generator=generator),
                        drop_boxes=torch.rand(b, generator=generator) < 0.5,
                        drop_labels=torch.rand(b, generator=generator) < 0.5)
    if kind != "image":  # per-frame ego motion, some frames unknown, some samples dropped
        cond = replace(cond, ego_speed=torch.rand(b, frames, generator=generator) * 20,
                       ego_yaw_rate=torch.randn(b, frames, generator=generator) * 0.1,
                       ego_known=torch.rand(b, frames, generator=generator) < 0.8,
                       drop_ego=torch.rand(b, generator=generator) < 0.5)
    if kind == "prediction":
        cond = replace(cond, context=x[:, :2].clone(), context_mask=context_mask_from_counts(torch.full((b,), context), 2))
    elif kind == "interpolation":
        cond = replace(cond, context=x.clone(), context_mask=interpolation_mask(b, frames),
                       regime=torch.randint(0, 2, (b,), generator=generator))
    return x, torch.rand(b, generator=generator) * 999, cond


def randomised(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Perturb every parameter, zero-initialised branches included (a trained network)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return module


def test_compile_mode_checks():
    assert check_compile_mode("default") == "default"
    assert set(COMPILE_MODES) == {"default", "max-autotune-no-cudagraphs", "reduce-overhead"}
    with pytest.raises(DriveSimInputError, match="field 'compile_mode', value 'fast'"):
        check_compile_mode("fast")
    with pytest.raises(DriveSimInputError, match="records CUDA graphs"):
        check_compile_mode("reduce-overhead", "cpu")
    assert check_compile_mode("reduce-overhead", "cuda") == "reduce-overhead"
    net = torch.nn.Linear(2, 2)
    with pytest.raises(DriveSimInputError, match="inductor options"):
        compile_network(net, "max-autotune-no-cudagraphs", backend="eager")
    with pytest.raises(DriveSimInputError, match="records CUDA graphs"):
        compile_network(net, "reduce-overhead", device="cpu")
    state = dict(net.state_dict())
    compile_network(net, backend="eager")
    assert dict(net.state_dict()).keys() == state.keys()  # in place: model files keep their keys


class _ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


def test_inductor_options_per_mode_and_nchw_layouts_for_cpu_training(monkeypatch, generator):
    """The mode's inductor options reach every graph; a CPU training graph also turns off
    inductor's channels-last convolutions (inference graphs keep them)."""
    import torch._inductor.compile_fx as compile_fx

    patches = []
    monkeypatch.setattr(compile_fx, "compile_fx",
                        lambda gm, inputs, config_patches: patches.append(config_patches) or gm.forward)
    x = torch.randn(1, 3, 8, 8, generator=generator)
    net = compile_network(_ConvNet())
    net(x).sum().backward()
    with torch.no_grad():
        net(x)
    tuned = compile_network(_ConvNet(), "max-autotune-no-cudagraphs")
    with torch.no_grad():
        tuned(x)
    assert patches == [{"layout_optimization": False}, {},
                       {"max_autotune": True, "coordinate_descent_tuning": True}]


def test_compile_network_compiles_the_modules_that_do_the_work(generator):
    """An autoencoder is used through encode / decode (its encoder and decoder), the upsampler
    through its UNet; both count one graph per call shape, with no breaks."""
    ae = AutoencoderKL(**AE_TINY)
    assert compile_targets(ae) == [ae.encoder, ae.decoder]
    counter = CompileCounter()
    compile_network(ae, backend=counter)
    with torch.no_grad():
        z = ae.encode(torch.rand(1, 2, 3, 16, 16, generator=generator)).mean
        ae.decode(z)
    assert counter.frame_count == 2
    up = VideoUpsampler(scale=2, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        num_head_channels=8, norm_groups=4, context_channels=4, max_frames=4,
                        max_aug_level=4).eval()
    assert compile_targets(up) == [up.unet]
    counter = CompileCounter()
    compile_network(up, backend=counter)
    dynamo.utils.counters.clear()
    x = torch.randn(1, 2, 3, 8, 16, generator=generator)
    with torch.no_grad():
        up(x, torch.full((1,), 300.0), Conditioning(lowres=x.clone(), regime=torch.tensor([2])))
    assert counter.frame_count == 1 and dict(dynamo.utils.counters["graph_break"]) == {}
    plain = torch.nn.Linear(2, 2)
    assert compile_targets(plain) == [plain]


@pytest.mark.parametrize("kind", ["image", "prediction", "interpolation"])
def test_unet_forward_is_one_graph(kind, generator):
    model = UNet(**TINY, **NETWORKS[kind])
    x, t, cond = unet_inputs(kind, generator, boxes=5)  # 5 boxes > max_boxes: the truncation path too
    explained = dynamo.explain(model)(x, t, cond)
    assert [b.reason for b in explained.break_reasons] == []
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_unet_compiles_once_per_shape_and_the_graph_equals_eager(generator):
    """Training steps that differ in values only (drop flags, context counts, timesteps) reuse
    one graph with no breaks; a new latent size compiles once more. The graph runs the
    compile-only code paths (plain GEGLU), so its output and gradients are checked too."""
    torch.manual_seed(0)
    eager = randomised(UNet(**TINY, **NETWORKS["prediction"]), generator)
    model = UNet(**TINY, **NETWORKS["prediction"])
    model.load_state_dict(eager.state_dict())
    counter = CompileCounter()
    compile_network(model, backend=counter)
    dynamo.utils.counters.clear()
    for i, (h, context) in enumerate(((4, 2), (4, 0), (8, 1))):
        x, t, cond = unet_inputs("prediction", generator, h=h, context=context)
        out = model(x, t, cond)
        out.square().mean().backward()
        if i == 0:
            reference = eager(x, t, cond)
            torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)
            reference.square().mean().backward()
            for (name, a), b in zip(eager.named_parameters(), model.parameters(), strict=True):
                torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-3, msg=name)
    assert dict(dynamo.utils.counters["graph_break"]) == {}
    assert counter.frame_count == 2


def test_autoencoder_encoder_and_decoder_are_one_graph_each(generator):
    ae = AutoencoderKL(**AE_TINY, temporal_decoder=True)
    x = torch.randn(6, 12, 16, 16, generator=generator)           # 2 clips x 3 frames, space-to-depth
    z = torch.randn(6, 4, 4, 4, generator=generator)
    for grad in (True, False):  # training, and the no-grad inference paths (in-place, channels-last)
        with torch.set_grad_enabled(grad):
            for net, args in ((ae.encoder, (x,)), (ae.decoder, (z, 3))):
                dynamo.reset()
                if not grad:
                    args = (args[0].contiguous(memory_format=torch.channels_last),) + args[1:]
                explained = dynamo.explain(net)(*args)
                assert [b.reason for b in explained.break_reasons] == []
                assert explained.graph_count == 1


def test_temporal_decoder_compiles_once_per_clip_length_and_equals_eager(generator):
    """Inference decode (no grad: the compiled blend without ``out=``) matches eager; one graph
    per clip length."""
    eager = randomised(AutoencoderKL(**AE_TINY, temporal_decoder=True), generator).eval()
    ae = AutoencoderKL(**AE_TINY, temporal_decoder=True).eval()
    ae.load_state_dict(eager.state_dict())
    counter = CompileCounter()
    compile_network(ae.decoder, backend=counter)
    with torch.no_grad():
        for frames in (3, 3, 5):
            z = torch.randn(1, frames, 4, 4, 4, generator=generator)
            torch.testing.assert_close(ae.decode(z), eager.decode(z), atol=1e-5, rtol=1e-4)
    assert counter.frame_count == 2


def test_unet_aot_graph_equals_eager_with_gradients(generator):
    """aot_eager runs the decomposed, functionalised forward and backward the compiler sees."""
    torch.manual_seed(0)
    eager = randomised(UNet(**TINY, **NETWORKS["image"]), generator)
    traced = UNet(**TINY, **NETWORKS["image"])
    traced.load_state_dict(eager.state_dict())
    compile_network(traced, backend="aot_eager")
    x, t, cond = unet_inputs("image", generator)
    out_e, out_c = eager(x, t, cond), traced(x, t, cond)
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-4)
    out_e.square().mean().backward()
    out_c.square().mean().backward()
    for (name, a), b in zip(eager.named_parameters(), traced.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-3, msg=name)


def _agree(eager_fn, compiled_fn, tol: float) -> None:
    """Outputs agree within ``tol`` relative to the output's largest magnitude."""
    a, b = eager_fn(), compiled_fn()
    assert (a - b).abs().max() <= tol * a.abs().max()


def _agree_in_sampling_and_training(eager, compiled, x, t, cond) -> None:
    """Eval-mode outputs within 1e-4 and training gradients within 1e-3 (relative to the largest)."""
    with torch.no_grad():
        _agree(lambda: eager.eval()(x, t, cond), lambda: compiled.eval()(x, t, cond), 1e-4)
    eager.train()(x, t, cond).square().mean().backward()
    compiled.train()(x, t, cond).square().mean().backward()
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        if a.grad.abs().max() > 0:
            _agree(lambda a=a: a.grad, lambda b=b: b.grad, 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "prediction", "interpolation"])
def test_inductor_unet_matches_eager(kind, generator):
    """Generated code (inductor, CPU): sampling output and training gradients within 1e-4 of
    eager, relative to the largest value (float32 reassociation)."""
    torch.manual_seed(0)
    eager = randomised(UNet(**TINY, **NETWORKS[kind]), generator)
    compiled = UNet(**TINY, **NETWORKS[kind])
    compiled.load_state_dict(eager.state_dict())
    compile_network(compiled)
    x, t, cond = unet_inputs(kind, generator)
    _agree_in_sampling_and_training(eager, compiled, x, t, cond)


@pytest.mark.slow
def test_inductor_autoencoder_matches_eager(generator):
    eager = randomised(AutoencoderKL(**AE_TINY, temporal_decoder=True), generator).eval()
    compiled = AutoencoderKL(**AE_TINY, temporal_decoder=True).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_network(compiled.encoder)
    compile_network(compiled.decoder)
    x = torch.rand(1, 3, 3, 16, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        _agree(lambda: eager.encode(x).mean, lambda: compiled.encode(x).mean, 1e-4)
        z = eager.encode(x).mean
        _agree(lambda: eager.decode(z), lambda: compiled.decode(z), 1e-4)


@pytest.mark.slow
def test_inductor_upsampler_matches_eager(generator):
    """The video upsampler's generated code: output and gradients within 1e-4 / 1e-3 of eager."""
    net = dict(scale=2, model_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_head_channels=8,
               norm_groups=4, context_channels=4, max_frames=4, max_aug_level=4)
    eager = randomised(VideoUpsampler(**net), generator)
    compiled = VideoUpsampler(**net)
    compiled.load_state_dict(eager.state_dict())
    compile_network(compiled)
    x = torch.randn(1, 2, 3, 8, 16, generator=generator)
    t, cond = torch.full((1,), 300.0), Conditioning(lowres=x.clone(), regime=torch.tensor([2]))
    _agree_in_sampling_and_training(eager, compiled, x, t, cond)
