"""Interpolation model on held-out synthetic drives: the cascade's in-between frames against
ground truth and against two baselines.

    python benchmarks/eval_interpolation.py --interp runs/demo/interpolation/model.safetensors \\
        --ae runs/demo/autoencoder_temporal/model.safetensors [--clips 16] [--gaps 2] [--steps 20]
        [--key-fps 2] [--out runs/demo/eval_interpolation]

Each held-out drive is rendered by the synthetic world (seed 987654, not a training seed) at
the cascade's output rate, ``key_fps x factor^2`` (2 -> 8 -> 32 fps with the tiny configs),
for ``--gaps`` key-frame gaps. Its key frames are encoded with the autoencoder and the two
passes of the rollout run over them exactly as ``drivesim rollout`` does (``InterpolationSampler``,
regime 0 then regime 1, each window conditioned on the drive's boxes and ego motion at its own
timestamps); the latents at the output rate are decoded with the temporal decoder. Compared
on the frames between the key frames (luma in [0, 1]):

- ``cascade``: the model's in-between frames;
- ``linear``: a linear blend of the two decoded key frames at each in-between time;
- ``nearest``: the nearer decoded key frame repeated;
- ``autoencoder``: every ground-truth frame encoded and decoded (the ceiling of any latent
  method; reference only).

All four share the decoded key frames, so only the in-betweens differ. Measures: PSNR
against the ground-truth frames; warp residual, the mean |ground truth - prediction warped
onto it by optical flow| (``metrics.oracle.scores.warp_residuals``: misplacement that flow
explains is forgiven, missing or invented content is not); and the temporal statistics at the
output rate, the 1-D Wasserstein distance between the distribution of consecutive-frame mean
|difference| of each variant and that of real drives at the same rate (a separate set of
``--clips`` rendered drives, seed 987655). Writes ``eval_interpolation.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from drivesim.data.datasets import SyntheticDataset
from drivesim.inference import load_model
from drivesim.metrics.oracle.scores import frame_differences, warp_residuals, wasserstein_1d
from drivesim.rollout.engine import SegmentCondition, interpolation_pass
from drivesim.rollout.sampler import InterpolationSampler
from drivesim.utils.io import atomic_write_json

VARIANTS = ("cascade", "linear", "nearest", "autoencoder")
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interp", default="runs/demo/interpolation/model.safetensors")
    p.add_argument("--ae", default="runs/demo/autoencoder_temporal/model.safetensors")
    p.add_argument("--clips", type=int, default=16, help="held-out drives (and as many real ones for W1)")
    p.add_argument("--gaps", type=int, default=2, help="key-frame gaps per drive")
    p.add_argument("--key-fps", type=float, default=2.0, help="key-frame rate (the video model's)")
    p.add_argument("--factor", type=int, default=4, help="frames per gap in each pass")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--guidance-boxes", type=float, default=2.0, help="box guidance (the rollouts' default)")
    p.add_argument("--size", default="64x128", help="HxW of the rendered drives (the autoencoder's training size)")
    p.add_argument("--traffic-range", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--out", default="runs/demo/eval_interpolation")
    return p.parse_args(argv)


def drives(n: int, frames: int, fps: float, hw: tuple[int, int], seed: int, traffic: float) -> list[dict]:
    """``n`` rendered drives of ``frames`` frames at ``fps`` (one window per drive)."""
    ds = SyntheticDataset(frames=frames, fps=fps, height=hw[0], width=hw[1], max_boxes=16, samples=n, seed=seed,
                          min_vehicles=4, max_vehicles=12, traffic_range=traffic)
    return list(ds)


def window_condition(sample: dict, idx: list[int], num_context: int = 2) -> SegmentCondition:
    """The drive's boxes, labels and ego motion at output frames ``idx`` as a B = 1 window condition."""
    def pick(key: str) -> torch.Tensor:
        return sample[key][idx][None]

    return SegmentCondition(boxes=pick("boxes"), box_classes=pick("box_classes"), box_ids=pick("box_ids"),
                            daynight=sample["daynight"].view(1), crowd=sample["crowd"].view(1),
                            num_context=num_context, window=len(idx), ego_speed=pick("ego_speed"),
                            ego_yaw_rate=pick("ego_yaw_rate"), ego_known=pick("ego_known"))


def cascade_latents(keys: torch.Tensor, sample: dict, passes: list[InterpolationSampler], factor: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Key latents ``[1, K, C, h, w]`` (output frames 0, R, 2R, ...) -> ``[1, (K-1) R + 1, C, h, w]``
    through every pass (the rollout engine's ``interpolation_pass``)."""
    seq, spacing = keys, factor ** len(passes)
    for interpolate in passes:
        filled = interpolation_pass(seq[:, 1:], seq[:, :1], 0, spacing, factor, interpolate, generator,
                                    lambda idx: window_condition(sample, idx))
        seq, spacing = torch.cat([seq[:, :1], filled], dim=1), spacing // factor
    return seq


def baselines(keys_rgb: torch.Tensor, r: int) -> dict[str, torch.Tensor]:
    """Linear blend and nearest-key repeat of decoded key frames ``[K, 3, H, W]`` at every output frame."""
    k = keys_rgb.shape[0]
    linear, nearest = [keys_rgb[:1]], [keys_rgb[:1]]
    for j in range(k - 1):
        a, b = keys_rgb[j], keys_rgb[j + 1]
        for i in range(1, r + 1):
            w = i / r
            linear.append(((1 - w) * a + w * b)[None])
            nearest.append((a if w < 0.5 else b)[None])
    return {"linear": torch.cat(linear), "nearest": torch.cat(nearest)}


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """[T, 3, H, W] in [-1, 1] -> [T, H, W] in [0, 1]."""
    return ((rgb.clamp(-1, 1) + 1) / 2 * LUMA).sum(dim=1)


def frame_scores(pred: torch.Tensor, truth: torch.Tensor, between: list[int]) -> tuple[list[float], list[float]]:
    """(PSNR dB, warp residual) per in-between frame (luma [T, H, W] in [0, 1])."""
    psnrs, residuals = [], []
    for t in between:
        mse = float(((pred[t] - truth[t]) ** 2).mean())
        psnrs.append(10 * np.log10(1.0 / max(mse, 1e-10)))
        # flow from the ground truth to the prediction: each true pixel samples its match
        residual, _ = warp_residuals(torch.stack([pred[t], truth[t]]))
        residuals.append(float(residual[0]))
    return psnrs, residuals


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> dict:
    hw = tuple(int(v) for v in args.size.lower().split("x"))
    r = args.factor ** 2
    out_fps = args.key_fps * r
    frames = args.gaps * r + 1
    ae = load_model(args.ae, "autoencoder").network
    interp = load_model(args.interp, "interpolation")
    regimes = int(interp.config.get("num_regimes", 1))
    if regimes < 2:
        raise SystemExit(f"{args.interp}: the model has {regimes} regime(s); the cascade needs 2")
    passes = [InterpolationSampler(interp, args.steps, regime=k, sampler=args.sampler,
                                   guidance_boxes=args.guidance_boxes) for k in range(2)]
    test = drives(args.clips, frames, out_fps, hw, 987654, args.traffic_range)
    real = drives(args.clips, frames, out_fps, hw, 987655, args.traffic_range)
    key_idx = list(range(0, frames, r))
    between = [t for t in range(frames) if t % r]
    scores = {v: {"psnr": [], "warp": []} for v in VARIANTS}
    diffs: dict[str, list[np.ndarray]] = {v: [] for v in VARIANTS}
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for n, sample in enumerate(test):
        video = sample["video"][None]  # [1, T, 3, H, W] in [-1, 1]
        keys = ae.encode_latents(video[:, key_idx])
        z = cascade_latents(keys, sample, passes, args.factor, gen)
        decoded = ae.decode_latents(z)[0]  # [T, 3, H, W]
        variants = {"cascade": decoded, **baselines(decoded[key_idx], r),
                    "autoencoder": ae.decode_latents(ae.encode_latents(video))[0]}
        truth = luma(sample["video"])
        for name, rgb in variants.items():
            y = luma(rgb)
            p, w = frame_scores(y, truth, between)
            scores[name]["psnr"] += p
            scores[name]["warp"] += w
            diffs[name].append(frame_differences(y))
        print(f"  drive {n + 1}/{len(test)}: cascade PSNR {np.mean(scores['cascade']['psnr'][-len(between):]):.2f} dB, "
              f"linear {np.mean(scores['linear']['psnr'][-len(between):]):.2f} dB", flush=True)
    real_diffs = np.concatenate([frame_differences(luma(s["video"])) for s in real])
    result = {"interp": str(args.interp), "ae": str(args.ae), "drives": len(test), "frames_per_drive": frames,
              "key_fps": args.key_fps, "output_fps": out_fps, "steps": args.steps, "sampler": args.sampler,
              "guidance_boxes": args.guidance_boxes, "in_between_frames": len(between) * len(test),
              "seconds": round(time.perf_counter() - start, 1), "real_mean_frame_diff": float(real_diffs.mean()),
              "variants": {}}
    for name in VARIANTS:
        d = np.concatenate(diffs[name])
        result["variants"][name] = {"psnr_db": float(np.mean(scores[name]["psnr"])),
                                    "warp_residual": float(np.mean(scores[name]["warp"])),
                                    "mean_frame_diff": float(d.mean()),
                                    "frame_diff_w1_vs_real": wasserstein_1d(d, real_diffs)}
    return result


def report(result: dict) -> None:
    print(f"\n{result['drives']} held-out drives, {result['key_fps']:g} -> {result['output_fps']:g} fps, "
          f"{result['in_between_frames']} in-between frames, {result['steps']} steps, {result['seconds']:.0f} s")
    print(f"{'variant':12} {'PSNR dB':>8} {'warp res':>9} {'mean |dx|':>10} {'W1 vs real':>11}")
    for name, v in result["variants"].items():
        print(f"{name:12} {v['psnr_db']:8.2f} {v['warp_residual']:9.4f} {v['mean_frame_diff']:10.4f} "
              f"{v['frame_diff_w1_vs_real']:11.4f}")
    print(f"{'real drives':12} {'':8} {'':9} {result['real_mean_frame_diff']:10.4f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in (args.interp, args.ae):
        if not Path(path).is_file():
            print(f"eval_interpolation: model file not found: {path} (run make demo first)", file=sys.stderr)
            return 2
    result = evaluate(args)
    report(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval_interpolation.json", result)
    print(f"wrote {out / 'eval_interpolation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
