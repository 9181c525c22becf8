# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv themselves; packages are re-installed only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv browser test test-fast lint demo images compile clean-stack

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# ruff, then the layering contract in pyproject.toml ([tool.importlinter]) with import-linter.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

# Headless Chromium (Debian's package) renders the reports in the report tests. Installed when missing and
# this user may run apt-get (root, as in CI); elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null) \
	  || echo "make browser: no chromium (install Debian's chromium package to run the report page tests)"; }

# Everything, slow end-to-end tests included (they are marked `slow`; `make test-fast` skips them), on
# pytest-xdist workers, one more than the cores (at most 4: the tests wait on servers and step subprocesses
# about a quarter of the time): whole files go to a worker, the long files first (tests/conftest.py), each
# worker with its own throw-away stack. The slowest tests are listed at the end.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -ge 3 ] && echo 4 || echo $$((n + 1)))
test: $(STAMP) lint browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The main job end to end on the embedded default (local SeaweedFS + MLflow + model server + kfp local runner).
demo: $(STAMP)
	$(VENV)/bin/retina demo

compile: $(STAMP)
	$(VENV)/bin/retina pipeline compile --out build/pipelines

# Builds the CPU project image and the GPU training image where a Docker engine exists.
images: $(STAMP)
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine here (the CLI alone cannot build)"; exit 1; }
	docker build -f infra/images/Dockerfile -t $$($(PY) -c 'from components.common.images import PROJECT_IMAGE; print(PROJECT_IMAGE)') .
	docker build -f infra/images/Dockerfile.gpu -t $$($(PY) -c 'from components.common.images import GPU_IMAGE; print(GPU_IMAGE)') .

clean-stack: $(STAMP)
	$(VENV)/bin/retina stack down
