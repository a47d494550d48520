# Two commands work on a fresh clone: `make demo` and `make test`.
# torch is installed first and pinned (torch==2.13.0, a CPU build on our machines); the
# constraints file keeps every later install from pulling another torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.kv_vla_installed
PYTEST_ARGS ?=

.PHONY: venv test docs demo demo-arm bench bench-readme model model-arm ablation-arm gate-report ablation clean

venv: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-ros.txt requirements-test.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt -r requirements-ros.txt -r requirements-test.txt
	$(PIP) install -q -c constraints.txt --no-deps --no-build-isolation -e .
	touch $@

# ruff first (ruff.toml: line length 120, rules E, F, W), then the suite.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS) test

# The generated parts of the docs and config/*.yaml, rewritten from the code (a test checks them).
docs: $(STAMP)
	$(PY) scripts/generate_docs.py

# The closed loop over DDS: minigrid_sim_node and kv_vla_node as two processes (docs/ros.md).
demo: $(STAMP)
	$(PY) -m kv_vla_ros.ros.worlds.demo

# The robot-arm world (docs/arm.md): arm_sim_node in closed loop over DDS, 3 episodes of the long variant (~1.5 min),
# driven by kv_vla_node with the shipped arm π0 (models/kv-vla-arm-pi0, trained from rosbags by make model-arm);
# `$(PY) -m kv_vla_ros.ros.worlds.arm_demo --expert` lets the scripted expert drive.
demo-arm: $(STAMP)
	$(PY) -m kv_vla_ros.ros.worlds.arm_demo

bench: $(STAMP)
	$(VENV)/bin/kv-vla bench cache

# The benchmark tables of docs/performance.md and docs/cache.md: the runs into docs/bench/ (JSON, Markdown, PNG), then the tables
# regenerated from their JSON. Run it on a quiet machine (about 10 min on 2 CPU cores).
bench-readme: $(STAMP)
	$(VENV)/bin/kv-vla bench paper --backbone openvla-small --out docs/bench
	$(VENV)/bin/kv-vla bench paper --backbone default --budget-frames 16 --out docs/bench
	$(VENV)/bin/kv-vla bench cache --out docs/bench
	$(PY) scripts/generate_docs.py

# The shipped model, its gate and its results table (about 60 min of training, 2 min for the gate, 15 min of evaluation on 2
# CPU cores): writes runs/kv-vla-minigrid (the model) and runs/eval-default (results.md/.png/.json).
model: $(STAMP)
	$(VENV)/bin/kv-vla train --out runs/kv-vla-minigrid --minutes 55
	$(VENV)/bin/kv-vla train-gate --model runs/kv-vla-minigrid --episodes 40 --epochs 30 --target value \
	    --tasks MiniGrid-MemoryS13Random MiniGrid-MemoryS17Random MiniGrid-MemoryS37 BabyAI-GoToLocal
	$(VENV)/bin/kv-vla eval --model runs/kv-vla-minigrid --tasks MiniGrid-MemoryS13Random MiniGrid-MemoryS17Random \
	    MiniGrid-MemoryS37 BabyAI-GoToLocal --episodes 200 --cache full --cache window:budget_frac=0.25 \
	    --out runs/eval-default

# The arm recipe from bags only (issue 22): expert bags of Arm-CueCarryLong -> π0 trained with a
# streamed, budgeted history (30 min) -> its gate from the same bags -> closed-loop table, 200
# held-out seeds (runs/arm/eval) -> runs/arm/kv-vla-arm-pi0 with its model card (52 min measured on
# 2 CPU cores). See docs/pi0.md, "Training π0 from bags". Another arm task: e.g.
# `TASK=Arm-CueCarryDistract OUT=runs/arm-distract MAX_STEPS=4430 make model-arm` (switches in scripts/model_arm.sh).
model-arm: $(STAMP)
	KV=$(VENV)/bin/kv-vla PY=$(PY) scripts/model_arm.sh

# What each part of the arm recipe buys (after make model-arm): the auxiliary loss off, eviction
# training off, equal wall time, 40 held-out seeds (68 min measured): runs/arm_ablation/ablation.{md,json,png}.
ablation-arm: $(STAMP)
	KV=$(VENV)/bin/kv-vla PY=$(PY) scripts/ablation_arm.sh

# The gate's results: every cache policy at a quarter and an eighth of the history, closed loop,
# 200 seeds per task (table, success-vs-budget plot, gate-score plot under runs/gate_report; the
# README's shorter table in runs/gate_report/readme_table.md).
gate-report: $(STAMP)
	$(VENV)/bin/kv-vla gate-report --out runs/gate_report
	$(PY) scripts/gate_report_table.py runs/gate_report/results.json > runs/gate_report/readme_table.md

# The recipe's ablation (issue #10): auxiliary loss on/off x 4 vs 49 tokens per frame, 14 min of
# training each, full-cache closed loop on S13Random and S37 (about 65 min on 2 CPU cores):
# runs/ablation/ablation.{md,json,png}.
ablation: $(STAMP)
	scripts/ablation.sh

clean:
	rm -rf $(VENV) build *.egg-info
