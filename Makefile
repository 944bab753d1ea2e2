# wsi-ai: `make demo` and `make test` do everything on a fresh machine.
# Labs pick their own torch build with e.g. `make install TORCH_VERSION=2.9.1 TORCHVISION_VERSION=0.24.1`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
DEMO_SLIDE ?= wsi_ai/data/CMU-1-Small-Region.svs
DEMO_OUT ?= demo-out
DEMO_QUPATH ?= demo-qupath
PYTEST_ARGS ?=

.PHONY: install lint test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

lint: install
	$(BIN)/ruff check wsi_ai tests benchmarks
	$(BIN)/ruff format --check wsi_ai tests benchmarks
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/wsi-ai info $(DEMO_SLIDE)
	$(BIN)/wsi-ai run pipelines/demo.csv --pipeline pipelines/he-density.toml -o $(DEMO_OUT)
	$(BIN)/wsi-ai export-qupath $(DEMO_OUT) -o $(DEMO_QUPATH) --overwrite
	@echo "demo outputs: $(DEMO_OUT)/summary.html (open it in a browser), $(DEMO_OUT)/slides/<name>/report.html, QuPath project $(DEMO_QUPATH)/"

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(DEMO_QUPATH) bench-out .pytest_cache .mypy_cache .ruff_cache
