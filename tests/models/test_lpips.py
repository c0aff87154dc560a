"""LPIPS against a reference computation written from the definition (Zhang et al. 2018, VGG16
"lin" variant, v0.1): plain functional VGG16 on torchvision's ``features.<i>`` keys, the
ScalingLayer, channel unit-normalisation at relu1_2 / relu2_2 / relu3_3 / relu4_3 / relu5_3,
squared differences weighted by the non-negative 1x1 heads, spatial mean, sum over layers."""

import math

import torch
import torch.nn.functional as F

from drivesim.models.lpips import LPIPS, load_lpips

# torchvision vgg16().features: conv indices per block; relu_k_last follows the block's last conv
BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _random_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {}
    for k, v in LPIPS().state_dict().items():
        if k in ("shift", "scale"):
            continue
        if k.startswith("lin"):
            state[k] = torch.rand(v.shape, generator=generator)        # heads are non-negative
        elif k.endswith("weight"):
            fan_in = v[0].numel()
            state[k] = torch.randn(v.shape, generator=generator) * math.sqrt(2.0 / fan_in)
        else:
            state[k] = 0.1 * torch.randn(v.shape, generator=generator)
    return state


def _reference(x: torch.Tensor, y: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image distance ``[N]`` of images ``[N, 3, H, W]`` in [-1, 1], in float64."""
    shift = torch.tensor(SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE, dtype=torch.float64).view(1, 3, 1, 1)

    def taps(img):
        h, out = (img.double() - shift) / scale, []
        for b, convs in enumerate(BLOCKS):
            if b:
                h = F.max_pool2d(h, 2)
            for i in convs:
                h = F.relu(F.conv2d(h, state[f"features.{i}.weight"].double(),
                                    state[f"features.{i}.bias"].double(), padding=1))
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        w = state[f"lin{k}.model.1.weight"].double().view(1, -1, 1, 1)   # [1, C, 1, 1]
        total += ((a - b).pow(2) * w).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_the_reference_computation(tmp_path, generator):
    state = _random_state(generator)
    torch.save(state, tmp_path / "lpips.pt")
    model = load_lpips(tmp_path / "lpips.pt")
    x = torch.rand(2, 2, 3, 32, 32, generator=generator) * 2 - 1               # [B, T, 3, H, W]
    y = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    ours = model(x, y)                                                         # [B, T]
    ref = _reference(x.flatten(0, 1), y.flatten(0, 1), state).view(2, 2)
    assert ours.shape == (2, 2)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-6)
    assert bool((ref > 0).all())
    # a metric: no dropout in the heads even if the module is put in training mode
    model.train()
    torch.testing.assert_close(model(x, y).double(), ref, rtol=1e-4, atol=1e-6)
    assert not model.lin0.model[0].training


def test_lpips_distance_grows_with_the_perturbation(tmp_path, generator):
    torch.save(_random_state(generator), tmp_path / "lpips.pt")
    model = load_lpips(tmp_path / "lpips.pt")
    x = torch.rand(1, 1, 3, 32, 32, generator=generator) * 2 - 1
    noise = torch.randn(x.shape, generator=generator)
    d = [float(model(x, (x + s * noise).clamp(-1, 1))) for s in (0.0, 0.05, 0.2, 0.5)]
    assert d[0] == 0.0 and d[1] < d[2] < d[3]
