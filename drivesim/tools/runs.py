"""Run folders of the training chain: checks before training, ``run.json``, running the chain.

``run_chain(spec)`` runs the stages of ``tools/chain.py`` in ``spec.run`` and keeps
``RUN/run.json`` (``drivesim.inference.run_folder``) naming every finished stage's model file,
so ``make rollout RUN=name``, ``drivesim rollout --run`` and ``Simulator.from_run`` load the run
as soon as its autoencoder and video model exist. Before anything runs it refuses, with one
line naming the mismatch: a run folder made at another size, a folder that is not a run, a
finished stage whose command or config changed (unless forced: its old files then move to
``RUN/.previous/``), a ``--init`` run of another size, and a stage whose inputs no earlier
stage provides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from drivesim.inference.run_folder import MANIFEST, read_run_manifest, write_run_manifest
from drivesim.tools.chain import (
    FIT_STAGES,
    ChainSpec,
    DataPlan,
    chain_stages,
    model_file,
    plan_data,
    stage_config,
)
from drivesim.tools.pipeline import Stage, StageResult, check_changes, run_pipeline
from drivesim.utils.io import DriveSimInputError

STAMPS = ".stamps"
# Simulator role -> chain stages that provide it, preferred first
ROLES: dict[str, tuple[str, ...]] = {"autoencoder": ("autoencoder_temporal", "autoencoder"), "video": ("video_ldm",),
                                     "image": ("image_ldm",), "interpolation": ("interpolation",),
                                     "upsampler": ("upsampler",)}


def stamp_dir(run: Path) -> Path:
    return Path(run) / STAMPS


def check_run_folder(spec: ChainSpec) -> None:
    """A run folder is new, empty, or one of ours at the same size."""
    run = Path(spec.run)
    if not run.exists():
        return
    if not run.is_dir():
        raise DriveSimInputError("the run folder is a file", path=run, field="RUN")
    doc = read_run_manifest(run)
    if doc is None:
        if any(run.iterdir()) and not stamp_dir(run).is_dir():
            raise DriveSimInputError("not empty and not a drivesim run folder (no run.json); use a new RUN",
                                     path=run, field="RUN")
        return
    if doc.get("size") not in (None, spec.size):
        raise DriveSimInputError(f"this run was trained at size {doc['size']!r}; use another RUN for size "
                                 f"{spec.size!r}", path=run / MANIFEST, field="size", value=spec.size)
    data = (doc.get("data") or {}).get("arg")
    if data is not None and not same_data(data, spec.data):
        raise DriveSimInputError(f"this run was trained on DATA={data}; use another RUN for other data (or "
                                 f"--init {run} to start from its models)", path=run / MANIFEST, field="data",
                                 value=spec.data)


def same_data(a: str, b: str) -> bool:
    """Two DATA arguments name the same data (folders compared by their resolved paths)."""
    if a == b:
        return True
    return Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve()


def check_init(spec: ChainSpec) -> None:
    """``--init`` names a run folder of the same size."""
    if spec.init is None:
        return
    init = Path(spec.init)
    if not init.is_dir():
        raise DriveSimInputError("the run to start from does not exist", path=init, field="INIT")
    if init.resolve() == Path(spec.run).resolve():
        raise DriveSimInputError("a run cannot start from itself", path=init, field="INIT")
    doc = read_run_manifest(init)
    if doc is not None and doc.get("size") not in (None, spec.size):
        raise DriveSimInputError(f"the run to start from was trained at size {doc['size']!r}, this one is "
                                 f"{spec.size!r}", path=init / MANIFEST, field="size", value=doc["size"])


def check_prerequisites(stages: Sequence[Stage], every: Sequence[Stage]) -> None:
    """Each input of a selected stage is written by an earlier selected stage or exists."""
    producer = {str(p): s.name for s in every for p in s.outputs}
    written: set[str] = set()
    for stage in stages:
        for path in stage.inputs:
            if str(path) in written or path.exists():
                continue
            source = producer.get(str(path))
            hint = (f"train stage {source} first (STAGE={source}) or run the whole chain" if source else
                    "it is not written by any stage of this chain")
            raise DriveSimInputError(f"stage {stage.name} needs this file; {hint}", path=path, field=stage.name)
        written.update(str(p) for p in stage.outputs)


def finished_models(run: Path) -> dict[str, Path]:
    """{role: model file} of the stages that finished (stamp written, file present)."""
    out = {}
    for role, names in ROLES.items():
        for name in names:
            if (stamp_dir(run) / f"{name}.done.json").is_file() and model_file(run, name).is_file():
                out[role] = model_file(run, name)
                break
    return out


def rollout_defaults(plan: DataPlan) -> dict[str, str]:
    """What ``make rollout RUN=...`` adds: footage without boxes rolls out without a box scenario
    (its models learned only the null box token), real footage starts from its start clip."""
    out = {}
    if not plan.info.boxes:
        out["scenario"] = "none"
    if plan.real:
        out["start"] = "clip:start"
    return out


def write_manifest(spec: ChainSpec, plan: DataPlan) -> Path:
    run = Path(spec.run)
    return write_run_manifest(
        run, finished_models(run), size=spec.size,
        data={"arg": spec.data, "kind": plan.info.kind, "root": str(plan.root), "boxes": plan.info.boxes},
        trainer=spec.trainer, init=None if spec.init is None else str(spec.init),
        configs={n: str(stage_config(spec, n)) for n in FIT_STAGES if stage_config(spec, n).is_file()},
        rollout=rollout_defaults(plan))


def run_chain(spec: ChainSpec, *, force: bool = False, on_change: Literal["rerun", "refuse"] = "refuse",
              extra_stages: Sequence[Stage] = (), runner: Callable[[Stage], int] | None = None) -> list[StageResult]:
    """Check, then run the spec's stages (and ``extra_stages`` after them) in ``spec.run``."""
    check_run_folder(spec)
    check_init(spec)
    plan = plan_data(spec)
    stages = chain_stages(spec, plan)
    every = chain_stages(replace(spec, stages=None), plan)
    check_prerequisites([*stages, *extra_stages], every)
    if on_change == "refuse" and not force:  # before run.json is touched
        check_changes([*stages, *extra_stages], stamp_dir(spec.run), run=Path(spec.run))
    if plan.skip_upsampler:
        print(f"-- upsampler left out: {plan.skip_upsampler}", flush=True)
    Path(spec.run).mkdir(parents=True, exist_ok=True)
    write_manifest(spec, plan)

    def after(result: StageResult) -> None:
        if not result.skipped:
            write_manifest(spec, plan)

    return run_pipeline([*stages, *extra_stages], stamp_dir(spec.run), force=force, on_change=on_change,
                        runner=runner, after_stage=after)


def manifest_summary(run: Path) -> dict[str, Any]:
    doc = read_run_manifest(run) or {}
    return {"models": doc.get("models", {}), "rollout": doc.get("rollout", {})}
