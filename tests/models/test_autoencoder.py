"""AutoencoderKL, temporal decoder, chunked decoding, model files, discriminators, LPIPS."""

import math

import pytest
import torch

from drivesim.models.ae_blocks import conv3d_frames, inference_layout
from drivesim.models.autoencoder import (
    AutoencoderKL,
    DiagonalGaussian,
    estimate_scale_factor,
    load_autoencoder,
)
from drivesim.models.discriminators import PatchDiscriminator2d, VideoDiscriminator3d, hinge_d_loss
from drivesim.models.lpips import LPIPS, load_lpips
from drivesim.models.model_files import load_model_file, save_model_file
from drivesim.utils.io import DriveSimInputError

TINY = dict(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=4)


def _randomise_temporal(ae: AutoencoderKL, generator: torch.Generator) -> None:
    """Give the zero-initialised temporal layers non-trivial weights (a trained decoder)."""
    with torch.no_grad():
        for p in ae.temporal_parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("ch_mult,patch,f", [((1, 2, 4), 1, 4), ((1, 2, 2, 4), 1, 8), ((1, 1, 2, 2, 4), 1, 16),
                                             ((1, 2), 2, 4), ((1, 2, 4), 2, 8), ((1, 2, 4), 4, 16)])
def test_shapes_for_every_downsampling_factor(ch_mult, patch, f, generator):
    ae = AutoencoderKL(base_channels=8, ch_mult=ch_mult, num_res_blocks=1, latent_channels=4,
                       patch_size=patch).eval()
    assert ae.downsample_factor == f
    x = torch.rand(2, 3, 3, 32, 64, generator=generator) * 2 - 1
    posterior = ae.encode(x)
    assert posterior.mean.shape == (2, 3, 4, 32 // f, 64 // f) == posterior.logvar.shape
    recon, _ = ae(x, generator=generator)
    assert recon.shape == x.shape
    with pytest.raises(DriveSimInputError, match=f"not divisible by the autoencoder downsampling factor f={f}"):
        ae.encode(x[..., : 32 - f // 2, :])


def test_patch_size_is_exact_space_to_depth(generator):
    """patch_size p: the encoder sees each p x p pixel block as p*p*3 channels of one position, and
    the decoder's p*p*3 output channels land back on the same block (pixel_unshuffle/shuffle)."""
    ae = AutoencoderKL(base_channels=8, ch_mult=(1, 2), num_res_blocks=1, latent_channels=4, patch_size=2).eval()
    assert ae.encoder.conv_in.in_channels == 12 and ae.decoder.conv_out.out_channels == 12
    x = torch.zeros(1, 1, 3, 8, 8)
    x[0, 0, 1, 2, 3] = 1.0  # channel 1 at (row 2, col 3) -> block (1, 1), sub-position (0, 1)
    seen = {}
    ae.encoder.conv_in.register_forward_hook(lambda m, i, o: seen.update(inp=i[0]))
    ae.encode(x)
    nz = seen["inp"].nonzero().tolist()
    assert nz == [[0, 1 * 4 + 0 * 2 + 1, 1, 1]]
    with pytest.raises(ValueError, match="patch_size"):
        AutoencoderKL(**TINY, patch_size=3)


def test_logvar_init_shrinks_the_initial_posterior_std(generator):
    x = torch.rand(2, 1, 3, 16, 16, generator=generator) * 2 - 1
    torch.manual_seed(0)
    plain = AutoencoderKL(**TINY).eval()
    torch.manual_seed(0)
    low = AutoencoderKL(**TINY, logvar_init=-8.0).eval()
    with torch.no_grad():
        a, b = plain.encode(x), low.encode(x)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(b.logvar, a.logvar - 8.0, atol=1e-5, rtol=0)
    assert "logvar_init" not in low.hparams  # an init choice: the weights carry it


def test_frames_are_independent_in_the_image_autoencoder(generator):
    ae = AutoencoderKL(**TINY).eval()
    x = torch.rand(1, 4, 3, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        whole = ae.decode(ae.encode(x).mode())
        single = ae.decode(ae.encode(x[:, 2:3]).mode())
    torch.testing.assert_close(whole[:, 2:3], single, atol=1e-5, rtol=0)


def test_kl_matches_closed_form(generator):
    mean = torch.randn(2, 3, 4, 5, 6, generator=generator)
    logvar = torch.randn(2, 3, 4, 5, 6, generator=generator)
    kl = DiagonalGaussian(mean, logvar).kl()
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(2, 3, 4))
    assert kl.shape == (2, 3)
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    # a standard normal posterior costs nothing
    assert DiagonalGaussian(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2)).kl().abs().max() == 0


def test_posterior_sample_uses_the_generator():
    post = DiagonalGaussian(torch.zeros(1, 1, 4, 8, 8), torch.full((1, 1, 4, 8, 8), math.log(4.0)))
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert 1.5 < float(a.std()) < 2.5  # std = exp(0.5 * log 4) = 2


@pytest.mark.parametrize("spatial_kernel", [3, 1])  # paper (3, 3, 3) and SVD-style (3, 1, 1) convs
def test_fresh_temporal_decoder_equals_image_decoder(generator, spatial_kernel):
    image = AutoencoderKL(**TINY).eval()
    video = AutoencoderKL(**TINY, temporal_decoder=True, temporal_spatial_kernel=spatial_kernel).eval()
    missing, unexpected = video.load_state_dict(image.state_dict(), strict=False)
    assert not unexpected and missing and all("temporal" in k for k in missing)
    z = torch.randn(2, 5, 4, 8, 8, generator=generator)
    with torch.no_grad():
        ref = image.decode(z)
        assert torch.equal(video.decode(z, image_only=True), ref)
        torch.testing.assert_close(video.decode(z), ref, atol=1e-6, rtol=0)
        _randomise_temporal(video, generator)
        assert (video.decode(z) - ref).abs().max() > 1e-3  # the temporal layers do act once trained
        assert torch.equal(video.decode(z, image_only=True), ref)  # alpha = 1 is the image decoder


@pytest.mark.parametrize("temporal", [False, True])
def test_cpu_inference_layout_keeps_values_and_returns_contiguous_tensors(temporal, generator):
    x = torch.rand(2, 4, 8, 8, generator=generator)
    assert inference_layout(x) is x  # a graph is being recorded: training keeps NCHW
    with torch.no_grad():
        y = inference_layout(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() and torch.equal(y, x)
    ae = AutoencoderKL(**TINY, temporal_decoder=temporal).eval()
    if temporal:
        _randomise_temporal(ae, generator)
    video = torch.rand(2, 3, 3, 16, 16, generator=generator) * 2 - 1
    seen = []                                                                # the networks' input layouts
    for net in (ae.encoder, ae.decoder):
        net.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                        and not args[0].is_contiguous()))
    ref_mean = ae.encode(video).mean                                        # NCHW (grad enabled)
    ref = ae.decode(ref_mean)
    assert seen == [False, False]
    with torch.no_grad():                                                    # channels-last inside
        mean = ae.encode(video).mean
        recon = ae.decode(mean)
    assert seen == [False, False, True, True]
    assert recon.is_contiguous()
    torch.testing.assert_close(mean, ref_mean.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon, ref.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (3, 1, 1), (5, 3, 3), (1, 3, 3)])
@pytest.mark.parametrize("clips", [(2, 4), (1, 1), (3, 1), (3, 2), (1, 6)])
def test_cpu_conv3d_via_stacked_2d_conv_matches_conv3d(kernel, clips, generator):
    # B > 1 folds several clips into one batch (a tap must not reach the neighbouring clip); T <= k_t // 2
    # gives taps that see only padding frames; values and all three gradients must equal Conv3d's
    b, t = clips
    conv = torch.nn.Conv3d(6, 5, kernel, padding=tuple(k // 2 for k in kernel))
    x = torch.randn(b, 6, t, 8, 10, generator=generator, requires_grad=True)
    out, ref = conv3d_frames(conv, x), conv(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn(out.shape, generator=generator)
    ours = torch.autograd.grad(out, (x, conv.weight, conv.bias), grad)
    theirs = torch.autograd.grad(ref, (x, conv.weight, conv.bias), grad)
    for a, e in zip(ours, theirs):
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (5, 3, 3)])
@pytest.mark.parametrize("clips", [(1, 4), (3, 2), (2, 1), (2, 7)])
def test_cpu_conv3d_inference_path_on_channels_last_frames_matches_conv3d(kernel, clips, generator):
    # inference: the frames arrive folded and channels-last (a strided 5D view), the taps slice them
    b, t = clips
    conv = torch.nn.Conv3d(6, 5, kernel, padding=tuple(k // 2 for k in kernel))
    folded = torch.randn(b * t, 6, 8, 10, generator=generator).contiguous(memory_format=torch.channels_last)
    x = folded.unflatten(0, (b, t)).transpose(1, 2)                      # [B, C, T, H, W] view
    before = x.clone()
    with torch.no_grad():
        out, ref = conv3d_frames(conv, x), conv(x.contiguous())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(x, before)                                        # the input is only read


def test_inference_fast_paths_equal_the_training_formulas_and_keep_inputs(generator):
    # no_grad uses h + (1 - alpha) * branch and in-place residual adds; the graph mode keeps
    # alpha * h + (1 - alpha) * (h + branch); both must agree and neither may write into its input
    ae = AutoencoderKL(**TINY, temporal_decoder=True)
    _randomise_temporal(ae, generator)
    mix, res = ae.decoder.temporal_mixes()[1], ae.decoder.up[1].blocks[0]  # a block with a 1x1 skip
    with torch.no_grad():
        mix.mix_logit.fill_(0.7)
    for module, channels, kwargs in ((mix, mix.block.conv1.in_channels, {"num_frames": 3}),
                                     (res, res.norm1.num_channels, {})):
        h = torch.randn(6, channels, 8, 8, generator=generator)
        ref = module(h, **kwargs)
        assert ref.requires_grad
        for layout in (torch.contiguous_format, torch.channels_last):
            inp = h.contiguous(memory_format=layout)
            with torch.no_grad():
                out = module(inp, **kwargs)
            torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)
            assert torch.equal(inp, h)


def test_alpha_is_a_sigmoid_blend():
    video = AutoencoderKL(**TINY, temporal_decoder=True)
    mix = video.decoder.temporal_mixes()[0]
    assert mix.alpha().item() == pytest.approx(0.5)
    with torch.no_grad():
        mix.mix_logit.fill_(2.0)
    assert mix.alpha().item() == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_chunked_decoding_equals_whole_clip(generator):
    ae = AutoencoderKL(**TINY, temporal_decoder=True).eval()
    _randomise_temporal(ae, generator)
    # 3 temporal blocks (mid + 2 levels), each 2 convs of kernel 3 -> radius 3 * 2 * 1 = 6 frames
    assert ae.temporal_receptive_radius == 6
    z = torch.randn(1, 17, 4, 4, 4, generator=generator)
    with torch.no_grad():
        whole = ae.decode(z)
        chunks = list(ae.decode_chunked(z, chunk=4))
        assert [c.shape[1] for c in chunks] == [4, 4, 4, 4, 1]
        torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-5, rtol=1e-5)
        short = torch.cat(list(ae.decode_chunked(z, chunk=4, overlap=1)), dim=1)
    assert (short - whole).abs().max() > 1e-4  # too little context shows at the seams


def test_scale_factor_gives_unit_variance_latents(generator):
    ae = AutoencoderKL(**TINY).eval()
    with pytest.raises(DriveSimInputError, match="scale factor"):
        ae.encode_latents(torch.zeros(1, 1, 3, 16, 16))
    batches = [torch.rand(2, 2, 3, 16, 16, generator=generator) * 2 - 1 for _ in range(3)]
    scale = estimate_scale_factor(ae, batches, torch.Generator().manual_seed(0))
    ae.set_scale_factor(scale)
    gen = torch.Generator().manual_seed(0)  # the same draws as the estimate
    with torch.no_grad():
        z = torch.cat([ae.encode_latents(b, sample=True, generator=gen) for b in batches])
    assert float(z.std()) == pytest.approx(1.0, rel=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(ae.decode_latents(z[:2]), ae.decode(z[:2] / scale))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_model_file_round_trip(tmp_path, suffix, generator):
    ae = AutoencoderKL(**TINY, temporal_decoder=True).eval()
    _randomise_temporal(ae, generator)
    ae.set_scale_factor(0.37)
    path = save_model_file(tmp_path / f"ae{suffix}", "autoencoder", ae.hparams, ae.state_dict())
    loaded = load_autoencoder(path)
    assert loaded.hparams == ae.hparams and float(loaded.scale_factor) == pytest.approx(0.37)
    x = torch.rand(1, 3, 3, 16, 16, generator=generator) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.decode(loaded.encode(x).mode()), ae.decode(ae.encode(x).mode()))
    with pytest.raises(FileExistsError):
        save_model_file(path, "autoencoder", ae.hparams, ae.state_dict())


def test_model_file_errors(tmp_path):
    ae = AutoencoderKL(**TINY)
    with pytest.raises(DriveSimInputError, match="model file not found"):
        load_autoencoder(tmp_path / "nope.safetensors")
    unet = save_model_file(tmp_path / "unet.safetensors", "unet", {"a": 1}, {"w": torch.zeros(2)})
    with pytest.raises(DriveSimInputError, match="'unet' model file, expected 'autoencoder'"):
        load_autoencoder(unet)
    hp, state = load_model_file(unet, "unet")
    assert hp == {"a": 1} and torch.equal(state["w"], torch.zeros(2))
    no_scale = {k: v for k, v in ae.state_dict().items() if k != "scale_factor"}
    path = save_model_file(tmp_path / "noscale.pt", "autoencoder", ae.hparams, no_scale)
    with pytest.raises(DriveSimInputError, match="no scale factor"):
        load_autoencoder(path)
    unset = save_model_file(tmp_path / "unset.pt", "autoencoder", ae.hparams, ae.state_dict())
    with pytest.raises(DriveSimInputError, match="never estimated"):
        load_autoencoder(unset)
    assert not load_autoencoder(unset, require_scale=False).has_scale_factor()
    wrong_shape = save_model_file(tmp_path / "shape.pt", "autoencoder", {**ae.hparams, "base_channels": 16},
                                  ae.state_dict())
    with pytest.raises(DriveSimInputError, match="do not match"):
        load_autoencoder(wrong_shape, require_scale=False)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DriveSimInputError, match="junk.safetensors"):
        load_autoencoder(tmp_path / "junk.safetensors")


def test_discriminators_output_patch_logits(generator):
    video = torch.rand(2, 4, 3, 32, 32, generator=generator)
    d2 = PatchDiscriminator2d(channels=8, num_layers=2)
    assert d2(video).shape[:3] == (2, 4, 1)
    d3 = VideoDiscriminator3d(channels=8, num_layers=2)
    out = d3(video)
    assert out.ndim == 5 and out.shape[:2] == (2, 1) and out.shape[2] >= 1
    # hinge: perfect separation beyond the margin costs nothing
    assert float(hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0))) == 0.0
    assert float(hinge_d_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(1.0)


def test_lpips_from_user_weights(tmp_path, generator):
    torch.manual_seed(0)
    state = {k: v for k, v in LPIPS().state_dict().items() if k not in ("shift", "scale")}
    with torch.no_grad():
        for k in state:
            if k.startswith("lin"):
                state[k] = torch.rand(state[k].shape, generator=generator)  # LPIPS heads are non-negative
    torch.save(state, tmp_path / "lpips.pt")
    lpips = load_lpips(tmp_path / "lpips.pt")
    x = torch.rand(1, 2, 3, 32, 32, generator=generator) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    assert torch.allclose(lpips(x, x), torch.zeros(1, 2))
    d = lpips(x, y)
    assert d.shape == (1, 2) and bool((d > 0).all())
    with pytest.raises(DriveSimInputError, match="LPIPS weights file not found"):
        load_lpips(tmp_path / "missing.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("lin4")}, tmp_path / "partial.pt")
    with pytest.raises(DriveSimInputError, match="incomplete"):
        load_lpips(tmp_path / "partial.pt")
