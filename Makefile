# Two entry points for a fresh clone: `make demo` and `make test`. Both set up .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo study test test-fast bench clean gpu-check

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo writes under examples/out/demo (ignored by git) and prints its table; the published
# copy in docs/results/demo is refreshed on purpose: examples/study.py --size demo --publish.
demo: $(STAMP)
	$(BIN)/python examples/study.py --size demo

study: $(STAMP)
	$(BIN)/python examples/study.py --size study --publish

# The GPU check (examples/gpu_check.sh): on a GPU machine that may be offline, so it makes no
# venv; it runs with .venv's python when there is one, else $(PY). GPU_CHECK_ARGS=--cpu: tiny, on CPU.
GPU_PY := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
gpu-check:
	PYTHON="$(GPU_PY)" bash examples/gpu_check.sh $(GPU_CHECK_ARGS)

# --durations: the slowest tests, so where CI's time goes is in every CI log.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20 $(PYTEST_ARGS)

# The inner loop: no network, no model trained, no Ray cluster (`make test` is the whole suite, CI's).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not network and not ray" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) examples/out
