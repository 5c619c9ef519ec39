# make help   -- lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
NPROC ?= 1
RUN_DIR ?= runs/default
ARGS ?=
export OMP_NUM_THREADS ?= $(shell [ $(NPROC) -gt 1 ] && echo 1 || nproc)
# The one launch rule: torchrun over NNODES x NPROC processes when that is more than one, else python.
LAUNCH = $(if $(filter-out 1,$(shell echo $$(( $(NPROC) * $(or $(NNODES),1) )))),$(VENV)/bin/torchrun --nnodes $(or $(NNODES),1) \
  --node_rank $(or $(NODE_RANK),0) --nproc_per_node $(NPROC) --master_addr $(or $(MASTER_ADDR),127.0.0.1) \
  --master_port $(or $(MASTER_PORT),29500),$(PY))

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all attribute select finetune export evaluate generate sweep compare report bench clean

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	@# Reuse an installed torch >= 2.6 (e.g. a CUDA build); else the CPU 2.13.0 wheel.
	@$(PY) -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 6))' 2>/dev/null \
		|| $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed ## create .venv (sees system packages) and install the project

demo: install ## the whole pipeline on the embedded sample with real SmolLM2-135M weights, sized for a CPU
	$(PY) pipeline.py stage=all +experiment=demo $(ARGS)

test: install ## run the tests (not slow, gpu ones skip without CUDA)
	$(PY) -m pytest -m "not slow" -q

test-all: install ## run every test, slow ones included
	$(PY) -m pytest -q

attribute: install ## integrated-gradients attribution (NPROC=8 for torchrun over 8 GPUs); ARGS=overrides
	$(LAUNCH) pipeline.py stage=attribute run_dir=$(RUN_DIR) $(ARGS)

select: install ## threshold selection -> <selection dir>/masks.parquet; ARGS="select.top_mass=0.6 select.method=random ..."
	$(PY) pipeline.py stage=select run_dir=$(RUN_DIR) $(ARGS)

sweep: install ## multirun over a threshold grid (segsft/conf/select/grid) -> a dir per job + sweeps/select/sweep.parquet; ARGS="select.top_mass=0.6,0.7"
	$(PY) pipeline.py --multirun stage=select run_dir=$(RUN_DIR) +select/grid=default $(ARGS)

evaluate: install ## accuracy and output length of the base and fine-tuned models (RUN_DIR; NPROC ranks; ARGS="evaluate.benchmarks=[aime24] evaluate.samples=8")
	$(LAUNCH) pipeline.py stage=evaluate run_dir=$(RUN_DIR) $(ARGS)

generate: install ## a training corpus from problems (ARGS="generate.problems=<file> model.name_or_path=<model> generate.samples=32")
	$(LAUNCH) pipeline.py stage=generate run_dir=$(RUN_DIR) $(ARGS)

compare: install ## pairwise agreement of every selection under RUN_DIR/selection -> RUN_DIR/compare/agreement.parquet
	$(PY) pipeline.py stage=compare run_dir=$(RUN_DIR) $(ARGS)

finetune: install ## selective SFT (SELECTION=<selection dir> NPROC=<procs per node>; NNODES NODE_RANK MASTER_ADDR MASTER_PORT for multi-node; ARGS=overrides)
	@# One node, 8 GPUs:  make finetune SELECTION=runs/default/selection/<name> NPROC=8
	@# N nodes: run on every node with NNODES=N NODE_RANK=<0..N-1> MASTER_ADDR=<address of node 0> MASTER_PORT=29500,
	@# finetune_dir on a filesystem all nodes share. ARGS="finetune.mode=full finetune.deepspeed=zero3 ..."
	$(LAUNCH) pipeline.py stage=finetune run_dir=$(RUN_DIR) $(if $(SELECTION),selection_dir=$(SELECTION)) $(ARGS)

export: install ## the fine-tuning run's tokens as datasets for TRL and axolotl -> <finetune_dir>/export (RUN_DIR; ARGS="finetune_dir=... export.dir=...")
	$(PY) pipeline.py stage=export run_dir=$(RUN_DIR) $(ARGS)

report: install ## one self-contained HTML page of a run: RUN=<run_dir> [SELECTION=<selection dir>] [ARGS="report.max_traces=20 ..."]
	$(PY) pipeline.py stage=report run_dir=$(or $(RUN),$(RUN_DIR)) $(if $(SELECTION),report.selection=$(SELECTION)) $(ARGS)

bench: install ## attribution engine vs reference benchmark (CPU)
	$(PY) bench/attribute_engine.py

clean: ## remove runs/ and caches (keeps .venv)
	rm -rf runs outputs multirun .pytest_cache
