# Two entry points for a fresh machine:
#   make run    creates .venv and runs the whole pipeline on the default (simulated) dataset
#   make test   creates .venv and runs the whole test suite (what CI runs)
# and the inner loop while developing:
#   make check  ruff and the fast tests (no pipeline runs), in under a minute
# The tests run in CORES processes (pytest-xdist); `make test` gives each a whole test module
# at a time, so that a module's fixtures are built once (the session's shared ones, such as the
# finished tiny project, are built once for all by the first process that needs them).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that CI and local installs use; the package itself accepts a range.
TORCH ?= torch==2.13.0
CORES ?= 2
PYTEST := $(BIN)/python -m pytest -n $(CORES)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test check lint format report dag clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES)

test: $(BIN)/.installed
	$(PYTEST) --dist loadscope --durations=15

# The fast tier: every test not marked workflow, slow or slurm.
check: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(PYTEST) --dist load -q -m "not workflow and not slow and not slurm"

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --cores 1

format: $(BIN)/.installed
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/snakefmt Snakefile workflow

report: $(BIN)/.installed
	$(BIN)/snakemake --cores $(CORES) --report report.html

dag: $(BIN)/.installed
	$(BIN)/snakemake --rulegraph --cores 1 | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results .snakemake report.html
