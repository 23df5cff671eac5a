# The two commands a new user runs: `make demo` and `make test`. Each sets up its own venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-pure-parser install lint typecheck bench bench-core bench-scale bench-verify bench-writer clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ztb demo

test: $(STAMP)
	$(BIN)/pytest -n 2 -q -p no:cacheprovider

test-pure-parser: $(STAMP)
	AIOHTTP_NO_EXTENSIONS=1 $(BIN)/pytest -n 2 -q -p no:cacheprovider tests/edge tests/sample

lint: $(STAMP)
	$(BIN)/ruff check src tests bench controls
	$(BIN)/ruff format --check src tests bench controls

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict controls bench

bench: $(STAMP)
	$(BIN)/python -m bench

bench-scale: $(STAMP)
	$(BIN)/python -m bench.scale_bench

bench-verify: $(STAMP)
	$(BIN)/python -m bench.verify_bench

bench-writer: $(STAMP)
	$(BIN)/python -m bench.writer_bench

bench-core: $(STAMP)
	$(BIN)/python -m bench.core_bench

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
