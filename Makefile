# drivesim — every target is a thin wrapper around the `drivesim` CLI.
# `make help` lists the targets. Variables can be overridden: `make train DATA=/data/videos SIZE=base TRAINER=ddp RUN=mine`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DS := $(VENV)/bin/drivesim
# CPU torch wheel on dev boxes and CI; on a GPU box use e.g. `make install TORCH=torch`.
TORCH ?= torch>=2.3,<2.14
EXTRAS ?= dev,nuscenes
# nuscenes-devkit pins numpy<2 but runs on numpy 2 for what we use: installed without its pins
NUSCENES_DEVKIT ?= nuscenes-devkit==1.2.0
STAMP := $(VENV)/.drivesim-installed
RUNS ?= runs
SIZE ?= tiny
FORCE ?= 0
SECONDS ?= 120
STEPS ?= 5
# make train: DATA (required), RUN (default <data name>-<size>), STAGE, TRAINER, INIT, MINUTES, ARGS (extra fit args);
# make rollout [RUN=name]: ROLLOUT_ARGS (extra rollout flags, e.g. --interp-passes 0 --no-upsample: key frames only)
STAGE ?=
TRAINER ?=
INIT ?=
MINUTES ?=

.PHONY: help install test test-slow lint data train rollout eval demo gpu-check bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)" -e ".[$(EXTRAS)]"
	$(if $(findstring nuscenes,$(EXTRAS)),$(PY) -m pip install -q --no-deps "$(NUSCENES_DEVKIT)")
	@touch $@

install: $(STAMP) ## create .venv and install drivesim with the dev extra (idempotent)

lint: install ## ruff check
	$(VENV)/bin/ruff check .

test: install lint ## lint + the default test suite (CI runs exactly this)
	$(PY) -m pytest -q

test-slow: install ## the slow tests only
	$(PY) -m pytest -q -m slow

data: install ## export a small synthetic dataset to DATA (default runs/data/synth)
	$(DS) data synth --out $(or $(DATA),$(RUNS)/data/synth) --clips 32 --seconds 12 --fps 10 --size 64x128 --seed 0 --val-fraction 0.25 --skip-existing

train: install ## the whole stack: DATA=dir|synthetic [SIZE=tiny|base TRAINER=cpu|ddp|fsdp|FILE RUN=name STAGE=x INIT=run MINUTES=M FORCE=1]
	@test -n "$(DATA)" || { echo "make train: DATA= is required: a clip folder, a folder of videos, a nuScenes dataroot, or synthetic"; exit 2; }
	$(DS) train --data $(DATA) --size $(SIZE) --runs $(RUNS) $(if $(RUN),--run $(RUNS)/$(RUN)) $(if $(TRAINER),--trainer $(TRAINER)) $(if $(INIT),--init $(INIT)) $(foreach s,$(STAGE),--stage $(s)) $(if $(MINUTES),--minutes $(MINUTES)) $(if $(filter 1,$(FORCE)),--force) $(if $(ARGS),-- $(ARGS))

rollout: install ## RUN=name: a drive with the run's models into runs/rollouts/NAME; no RUN: the demo's day and night rollouts through its cascade
ifdef RUN
	$(DS) rollout --run $(RUNS)/$(RUN) --out $(RUNS)/rollouts/$(RUN) --seconds $(SECONDS) --steps $(STEPS) --overwrite $$($(PY) -m drivesim.tools.run_info $(RUNS)/$(RUN)) $(ROLLOUT_ARGS)
else
	$(DS) rollout --preset demo --runs $(RUNS) --seconds $(SECONDS) --steps $(STEPS) --crowd crowded --traffic-range 60 --guidance-boxes 2 --workers 0 --overwrite --debug-video $(ROLLOUT_ARGS)
endif

eval: install ## score the demo rollouts against the held-out synthetic clips (oracle metrics)
	$(DS) eval --real $(RUNS)/demo/data --real-split val --fake $(RUNS)/rollouts/demo --fps 2 --metrics oracle --out $(RUNS)/demo/eval/report.json --overwrite

demo: install ## data -> autoencoder -> temporal decoder -> latents -> image LDM -> video LDM -> interpolation -> upsampler -> rollouts -> eval
	$(DS) demo --runs $(RUNS) $(if $(filter 1,$(FORCE)),--force,)

gpu-check: install ## every stage's base config for a few steps on CUDA with the ddp trainer: throughput and memory
	$(DS) gpu-check --size $(or $(filter-out tiny,$(SIZE)),base) --trainer $(or $(TRAINER),ddp)

bench: install ## performance scripts (ratios against reference implementations)
	$(PY) benchmarks/run_all.py

clean: ## remove runs/ (keeps .venv)
	rm -rf $(RUNS)
