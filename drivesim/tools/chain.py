"""The training chain: every stage of the stack in order, each stage's model file feeding the next.

    data -> autoencoder -> autoencoder_temporal -> latents -> image_ldm -> video_ldm
         -> interpolation -> upsampler          (the last two when their size config exists)

``chain_stages(spec)`` builds the stages (``tools/pipeline.Stage``) of a run folder for a size,
a DATA (``tools/prepare.py``), a trainer config and optional wall-time budgets; ``drivesim
train`` runs them and ``drivesim demo`` runs a part of them on the synthetic world, then its
rollouts and evaluation. Each training stage is one ``drivesim fit`` of the packaged size
config; the chain passes what the configs leave open: the data (``--data.init_args.*``), the
model file it writes (``RUN/<stage>/model.safetensors``), the file it starts from
(``init_from``: temporal decoder <- autoencoder, video / interpolation <- image LDM; with ``--init
RUN`` also that run's files: ``init_from`` for the first stages and the upsampler, ``temporal_from``
for the layers the later stages add) and the frozen autoencoder of the LDM stages
(``autoencoder_path``). Every fit carries ``--ckpt_path
last``, so a stopped stage resumes from its last checkpoint (``tools/pipeline.py`` keeps its
folder only for the same settings). Layout and options: docs/training.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drivesim.tools.pipeline import Stage
from drivesim.tools.prepare import STREAM, DataInfo, detect_data
from drivesim.utils.io import DriveSimInputError

SIZES = ("tiny", "base")
TRAINERS = ("cpu", "ddp", "ddp_cpu", "fsdp")
MODEL = "model.safetensors"


@dataclass(frozen=True)
class FitStage:
    """A training stage: its config (pattern under the config root), the data it reads
    (``clips`` at the training size, ``latents``, ``hr`` clips at the upsampler's size), the
    chain stage whose model file it starts from, whether it needs the frozen autoencoder, and
    whether a run given ``--init`` starts it from that run's file of the same stage (then the
    config's architecture block ``arch`` is cleared: the file states it), or, for a stage that adds
    layers to its ``init_from`` (``temporal_same``), takes those added layers from that run's file
    of the same stage (``temporal_from``) while the rest comes from this run's earlier stage."""

    config: str
    source: str
    init_from: str | None = None
    autoencoder: bool = False
    init_same: bool = False
    arch: str | None = None
    boxes: bool = False
    temporal_same: bool = False


FIT_STAGES: dict[str, FitStage] = {
    "autoencoder": FitStage("autoencoder/{size}.yaml", "clips", init_same=True, arch="autoencoder"),
    "autoencoder_temporal": FitStage("autoencoder/temporal_{size}.yaml", "clips", init_from="autoencoder",
                                     temporal_same=True),
    "image_ldm": FitStage("image_ldm/{size}.yaml", "latents", autoencoder=True, init_same=True, boxes=True),
    "video_ldm": FitStage("video_ldm/{size}.yaml", "latents", init_from="image_ldm", autoencoder=True, boxes=True,
                          temporal_same=True),
    "interpolation": FitStage("video_ldm/interp_{size}.yaml", "latents", init_from="image_ldm", autoencoder=True,
                              boxes=True, temporal_same=True),
    "upsampler": FitStage("upsampler/{size}.yaml", "hr", init_same=True, arch="upsampler"),
}
ORDER = ("data", "autoencoder", "autoencoder_temporal", "latents", "image_ldm", "video_ldm", "interpolation",
         "upsampler")
# Wall-time shares of the training stages for MINUTES= (minutes at a 14-minute total). The demo
# states its own minutes (tools/demo.py: shorter cascade stages to fit its 20 minutes).
SHARES = {"autoencoder": 3.5, "autoencoder_temporal": 0.5, "image_ldm": 4.5, "video_ldm": 2.0,
          "interpolation": 1.5, "upsampler": 2.0}
# The synthetic world's export per size: clips of 12 s at 10 fps, dense traffic near the camera
# (the tiny configs' synthetic source uses the same), a quarter held out.
SYNTHETIC_CLIPS = {"tiny": 32, "base": 256}
SYNTHETIC_FPS = 10.0  # a stage with windows at a higher rate renders the world itself
SYNTHETIC_ARGS = ["--seconds", "12", "--fps", f"{SYNTHETIC_FPS:g}", "--seed", "0", "--val-fraction", "0.25",
                  "--night-fraction", "0.5", "--min-vehicles", "4", "--max-vehicles", "12",
                  "--traffic-range", "60", "--workers", "0", "--overwrite"]


@dataclass(frozen=True)
class ChainSpec:
    """What to train: the run folder, DATA, size, trainer config (a name in TRAINERS or a YAML
    file; None: the size config's own), a run to start from (``init``), which stages (None: all
    that have a config), wall-time budgets (``minutes``: a total split by SHARES;
    ``stage_minutes``: per stage, winning), extra ``drivesim fit`` arguments for every training
    stage (``extra``) or one (``stage_args``), and the config root (default: ``configs/``)."""

    run: Path
    data: str
    size: str = "tiny"
    trainer: str | None = None
    init: Path | None = None
    stages: tuple[str, ...] | None = None
    minutes: float | None = None
    stage_minutes: Mapping[str, float] = field(default_factory=dict)
    extra: tuple[str, ...] = ()
    stage_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    config_root: Path | None = None
    synthetic_clips: int | None = None
    workers: int = 1
    progress: bool = True


def config_root(spec: ChainSpec | None = None) -> Path:
    """The spec's config root, else configs/ of the working directory, else the packaged one."""
    if spec is not None and spec.config_root is not None:
        return Path(spec.config_root)
    local = Path("configs")
    return local if local.is_dir() else Path(__file__).resolve().parents[2] / "configs"


def stage_config(spec: ChainSpec, name: str) -> Path:
    return config_root(spec) / FIT_STAGES[name].config.format(size=spec.size)


def available_stages(spec: ChainSpec) -> tuple[str, ...]:
    """The chain's stages for the spec's size: those whose config exists (interpolation and
    upsampler are optional), plus data and latents."""
    return tuple(s for s in ORDER if s not in FIT_STAGES or stage_config(spec, s).is_file())


def selected_stages(spec: ChainSpec) -> tuple[str, ...]:
    if spec.size not in SIZES:
        raise DriveSimInputError(f"expected one of {SIZES}", field="SIZE", value=spec.size)
    have = available_stages(spec)
    if spec.data == STREAM:  # every stage renders the world: nothing to prepare or encode
        have = tuple(s for s in have if s in FIT_STAGES)
    if spec.stages is None:
        return have
    for name in spec.stages:
        if name not in ORDER:
            raise DriveSimInputError(f"unknown stage; expected one of {list(ORDER)}", field="STAGE", value=name)
        if name not in have:
            raise DriveSimInputError(f"no {spec.size} config for this stage", path=stage_config(spec, name),
                                     field="STAGE", value=name)
    return tuple(s for s in have if s in spec.stages)


def trainer_config(spec: ChainSpec) -> Path | None:
    if spec.trainer is None:
        return None
    path = config_root(spec) / "trainer" / f"{spec.trainer}.yaml" if spec.trainer in TRAINERS else Path(spec.trainer)
    if not path.is_file():
        raise DriveSimInputError(f"trainer config not found; expected one of {TRAINERS} or a YAML file",
                                 path=path, field="TRAINER", value=spec.trainer)
    return path


def data_section(path: Path) -> dict:
    """``data.init_args`` of a stage config."""
    return (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("init_args", {})


def _size_text(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _config_hw(spec: ChainSpec, name: str) -> tuple[int, int]:
    section = data_section(stage_config(spec, name))
    return int(section.get("height", 128)), int(section.get("width", 256))


def clip_seconds(spec: ChainSpec, stages: tuple[str, ...]) -> float:
    """Converted clip length: the longest training window (frames - 1) / fps plus 0.5 s, at
    least 4 s, rounded up to half seconds."""
    span = 0.0
    for name in stages:
        if name in FIT_STAGES:
            section = data_section(stage_config(spec, name))
            rates = config_rates(section)
            if rates:
                span = max(span, (int(section.get("frames", 1)) - 1) / min(rates))
    return max(4.0, math.ceil(2 * (span + 0.5)) / 2)


def config_rates(section: dict) -> list[float]:
    """The window frame rates of a config's data section (``fps``: one rate or a list; None: none)."""
    fps = section.get("fps")
    return [] if fps is None else [float(f) for f in (fps if isinstance(fps, list) else [fps])]


@dataclass(frozen=True)
class DataPlan:
    """Where the stages read their data: ``root`` (clips at the training size), ``hr_root``
    (clips at the upsampler's size; None: the upsampler config's own source), the validation
    split name, whether the clips carry boxes, and why the upsampler is left out (if it is)."""

    info: DataInfo
    root: Path
    hr_root: Path | None
    val_split: str
    skip_upsampler: str | None = None

    @property
    def real(self) -> bool:
        return self.info.kind != "synthetic"


def plan_data(spec: ChainSpec) -> DataPlan:
    """Where the run's data comes from; the high-resolution set is planned whenever the size has
    an upsampler stage, so training that stage later needs no new conversion."""
    info = detect_data(spec.data)
    run, stages = spec.run, available_stages(spec)
    if info.kind in ("synthetic", "stream"):
        return DataPlan(info, run / "data", None, "val")
    if info.kind == "clips":
        hr, skip = Path(spec.data), None
        if "upsampler" in stages:
            need = _config_hw(spec, "upsampler")
            if info.clip_size is None or info.clip_size[0] < need[0] or info.clip_size[1] < need[1]:
                hr, skip = None, (f"the clips are {_size_text(info.clip_size or (0, 0))}, the upsampler trains on "
                                  f"{_size_text(need)} (convert the footage at that size to train it)")
        return DataPlan(info, Path(spec.data), hr, "val" if info.has_val else "train", skip)
    hr = run / "data_hr" if "upsampler" in stages else None
    return DataPlan(info, run / "data", hr, "val")


def _max_time(minutes: float) -> str:
    seconds = max(30, int(round(minutes * 60)))
    days, rest = divmod(seconds, 86400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def stage_budgets(spec: ChainSpec, stages: tuple[str, ...]) -> dict[str, float]:
    """Minutes per training stage: ``minutes`` split by SHARES, ``stage_minutes`` winning."""
    trained = [s for s in stages if s in FIT_STAGES]
    out: dict[str, float] = {}
    if spec.minutes is not None:
        if not spec.minutes > 0:
            raise DriveSimInputError("expected minutes > 0", field="MINUTES", value=spec.minutes)
        total = sum(SHARES[s] for s in trained) or 1.0
        out = {s: spec.minutes * SHARES[s] / total for s in trained}
    for name, minutes in spec.stage_minutes.items():
        if name not in FIT_STAGES or not minutes > 0:
            raise DriveSimInputError("expected STAGE=MINUTES with a training stage and minutes > 0",
                                     field="--minutes", value=f"{name}={minutes}")
        out[name] = float(minutes)
    return out


def data_stage(spec: ChainSpec, plan: DataPlan) -> Stage:
    run, root = spec.run, plan.root
    size = _size_text(_config_hw(spec, "autoencoder"))
    if plan.info.kind == "synthetic":
        clips = spec.synthetic_clips or SYNTHETIC_CLIPS[spec.size]
        return Stage("data", f"export the synthetic world ({clips} clips, {size} @ 10 fps)",
                     ["data", "synth", "--out", str(root), "--clips", str(clips), "--size", size, *SYNTHETIC_ARGS],
                     outputs=[root / "manifest.jsonl"])
    argv = ["data", "prepare", "--data", spec.data, "--out", str(run / "data"), "--size", size,
            "--clip-seconds", f"{clip_seconds(spec, available_stages(spec)):g}", "--start", str(run / "start"),
            "--info", str(run / "data.json"), "--workers", str(spec.workers)]
    if plan.hr_root is not None and plan.info.kind != "clips":
        argv += ["--hr-out", str(plan.hr_root), "--hr-size", _size_text(_config_hw(spec, "upsampler"))]
    if not spec.progress:
        argv.append("--no-progress")
    outputs = [run / "data.json", run / "start" / "clip.json"]
    if plan.info.kind == "clips":
        inputs = [root / "manifest.jsonl"]
    else:  # converted into the run folder
        inputs = []
        outputs += [root / "manifest.jsonl"] + ([plan.hr_root / "manifest.jsonl"] if plan.hr_root else [])
    return Stage("data", f"prepare DATA ({plan.info.kind}: {spec.data})", argv, outputs=outputs, inputs=inputs)


def model_file(run: Path, stage: str) -> Path:
    return run / stage / MODEL


def autoencoder_file(spec: ChainSpec) -> Path:
    """The autoencoder the LDM stages use: the temporal decoder's when the chain has that stage."""
    name = "autoencoder_temporal" if stage_config(spec, "autoencoder_temporal").is_file() else "autoencoder"
    return model_file(spec.run, name)


def latents_stage(spec: ChainSpec, plan: DataPlan) -> Stage:
    ae, out = autoencoder_file(spec), spec.run / "latents"
    argv = ["data", "encode", "--ckpt", str(ae), "--data", str(plan.root), "--out", str(out),
            "--size", _size_text(_config_hw(spec, "image_ldm")), "--overwrite"]
    return Stage("latents", "encode the dataset into latent shards", argv + ([] if spec.progress else ["--no-progress"]),
                 outputs=[out / "manifest.jsonl"], inputs=[ae, plan.root / "manifest.jsonl"])


def _data_args(spec: ChainSpec, name: str, plan: DataPlan) -> tuple[list[str], Path | None]:
    """(``--data.init_args`` flags, the manifest the stage reads) for a stage's source."""
    section = data_section(stage_config(spec, name))
    if plan.info.kind == "stream":
        fps = [] if section.get("fps") else ["--data.init_args.fps", "10"]
        return ["--data.init_args.source", "synthetic", *fps], None
    if plan.info.kind == "synthetic" and max(config_rates(section), default=0.0) > SYNTHETIC_FPS:
        return ["--data.init_args.source", "synthetic"], None  # faster than the export: the world rendered
    fs = FIT_STAGES[name]
    if fs.source == "hr":
        if plan.hr_root is None:
            return [], None  # the config's own source (the synthetic world at the upsampler's size)
        root = plan.hr_root
        return (["--data.init_args.source", "clips", "--data.init_args.root", str(root),
                 "--data.init_args.val_split", plan.val_split], root / "manifest.jsonl")
    root = plan.root if fs.source == "clips" else spec.run / "latents"
    return (["--data.init_args.source", fs.source, "--data.init_args.root", str(root),
             "--data.init_args.val_split", plan.val_split], root / "manifest.jsonl")


def init_file(spec: ChainSpec, name: str) -> Path | None:
    """The model file a stage starts from: the earlier stage's, or ``--init``'s same stage."""
    fs = FIT_STAGES[name]
    if fs.init_from is not None:
        return model_file(spec.run, fs.init_from)
    if spec.init is not None and fs.init_same:
        return _init_run_file(spec, name)
    return None


def temporal_file(spec: ChainSpec, name: str) -> Path | None:
    """With ``--init``: the file of the same stage whose added (temporal) layers the stage takes."""
    if spec.init is None or not FIT_STAGES[name].temporal_same:
        return None
    return _init_run_file(spec, name)


def _init_run_file(spec: ChainSpec, name: str) -> Path:
    path = model_file(Path(spec.init), name)
    if not path.is_file():
        raise DriveSimInputError(f"the run to start from has no {name} model", path=path, field="INIT",
                                 value=str(spec.init))
    return path


def fit_stage(spec: ChainSpec, name: str, plan: DataPlan, minutes: float | None) -> Stage:
    fs, out = FIT_STAGES[name], spec.run / name
    argv = ["fit", "--config", str(stage_config(spec, name))]
    trainer = trainer_config(spec)
    if trainer is not None:
        argv += ["--config", str(trainer)]
    data_args, manifest = _data_args(spec, name, plan)
    argv += [*data_args, "--trainer.default_root_dir", str(out), "--model.init_args.model_file", str(out / MODEL),
             "--model.init_args.overwrite", "true"]
    inputs = [manifest] if manifest is not None else []
    if fs.autoencoder:
        argv += ["--model.init_args.autoencoder_path", str(autoencoder_file(spec))]
        inputs.append(autoencoder_file(spec))
    init = init_file(spec, name)
    if init is not None:
        argv += (["--model.init_args." + fs.arch, "null"] if fs.arch and fs.init_from is None else [])
        argv += ["--model.init_args.init_from", str(init)]
        inputs.append(init)
    temporal = temporal_file(spec, name)
    if temporal is not None:
        argv += ["--model.init_args.temporal_from", str(temporal)]
        inputs.append(temporal)
    if fs.boxes and not plan.info.boxes:  # footage without boxes: every sample gets the learned null box token
        argv += ["--model.init_args.drop_boxes", "1.0"]
    if minutes is not None:
        argv += ["--trainer.max_time", _max_time(minutes)]
    argv += [*spec.extra, *spec.stage_args.get(name, ()), "--ckpt_path", "last"]
    budget = f", {minutes:.1f} min budget" if minutes is not None else ""
    return Stage(name, f"train {name} ({spec.size}{budget})", argv, outputs=[out / MODEL], inputs=inputs,
                 workdir=out)


def chain_stages(spec: ChainSpec, plan: DataPlan | None = None) -> list[Stage]:
    """The selected stages of the chain, in order (see the module doc); the upsampler is left
    out when the data cannot train it (``plan.skip_upsampler`` says why)."""
    stages = selected_stages(spec)
    plan = plan or plan_data(spec)
    if plan.skip_upsampler:
        stages = tuple(s for s in stages if s != "upsampler")
    budgets = stage_budgets(spec, stages)
    out = []
    for name in stages:
        if name == "data":
            out.append(data_stage(spec, plan))
        elif name == "latents":
            out.append(latents_stage(spec, plan))
        else:
            out.append(fit_stage(spec, name, plan, budgets.get(name)))
    return out
