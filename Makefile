# drivesim — every target is a thin wrapper around the `drivesim` CLI.
# `make help` lists the targets. Variables can be overridden: `make train STAGE=image_ldm SIZE=base DATA=/data/clips`.
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
DATA ?= $(RUNS)/data/synth
STAGE ?= autoencoder
SIZE ?= tiny
FORCE ?= 0
SECONDS ?= 120
STEPS ?= 5

.PHONY: help install test test-slow lint data train rollout eval demo bench clean

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

data: install ## export a small synthetic dataset to $(DATA)
	$(DS) data synth --out $(DATA) --clips 32 --seconds 12 --fps 10 --size 64x128 --seed 0 --val-fraction 0.25 --skip-existing

train: install ## one stage: STAGE=autoencoder|temporal_decoder|image_ldm|video_ldm|interpolation SIZE=tiny|base DATA=dir [AE=file INIT=file]
	$(DS) train --stage $(STAGE) --size $(SIZE) --data $(DATA) --out $(RUNS)/$(STAGE)-$(SIZE) $(if $(AE),--ae $(AE)) $(if $(INIT),--init $(INIT))

rollout: install ## 2-minute day and night rollouts with the demo models
	$(DS) rollout --preset demo --runs $(RUNS) --seconds $(SECONDS) --steps $(STEPS) --crowd crowded --traffic-range 60 --guidance-boxes 2 --workers 0 --overwrite --debug-video

eval: install ## score the demo rollouts against the held-out synthetic clips (oracle metrics)
	$(DS) eval --real $(RUNS)/demo/data --real-split val --fake $(RUNS)/rollouts/demo --fps 2 --metrics oracle --out $(RUNS)/demo/eval/report.json --overwrite

demo: install ## data -> autoencoder -> temporal decoder -> latents -> image LDM -> video LDM -> rollouts -> eval
	$(DS) demo --runs $(RUNS) $(if $(filter 1,$(FORCE)),--force,)

bench: install ## performance scripts (ratios against reference implementations)
	$(PY) benchmarks/run_all.py

clean: ## remove runs/ (keeps .venv)
	rm -rf $(RUNS)
