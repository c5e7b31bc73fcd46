# stagecast: `make run` serves the gateway with the embedded model; `make test` runs every test.
# Needs only Python 3.11+, make and a C compiler: uv is installed into .tools/, the project and
# its locked dependencies into .venv/.

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin

export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export UV_PYTHON_DOWNLOADS := never
# llama.cpp built for this CPU's exact features crashed on some machines; build portable code.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install browser run test check fmt bench bench-peers clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --extra local --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

# The web UI tests drive Debian's Chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "chromium is not installed: the web UI tests will be skipped"; \
	  fi; }

run: install
	$(BIN)/stagecast serve

test: install browser
	$(BIN)/pytest

check: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# The side-by-side benchmark: direct vs stagecast (vs LiteLLM after `make bench-peers`).
bench: install
	$(BIN)/python -m bench.runner

# LiteLLM's proxy and py-spy, in an environment of their own: never in stagecast's.
PEERS := bench/.peers-venv
bench-peers:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --disable-pip-version-check 'litellm[proxy]==1.108.7' 'py-spy==0.4.3'

clean:
	rm -rf $(VENV) $(TOOLS) $(PEERS) .pytest_cache .mypy_cache .ruff_cache
