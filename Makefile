# wsi-ai: `make demo` and `make test` do everything on a fresh machine.
# Labs pick their own torch build with e.g. `make install TORCH_VERSION=2.9.1 TORCHVISION_VERSION=0.24.1`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
DEMO_SLIDE ?= wsi_ai/data/CMU-1-Small-Region.svs
DEMO_OUT ?= demo-out
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
	mkdir -p $(DEMO_OUT)
	$(BIN)/wsi-ai info $(DEMO_SLIDE)
	$(BIN)/wsi-ai info $(DEMO_SLIDE) --json > $(DEMO_OUT)/info.json
	$(BIN)/wsi-ai tissue $(DEMO_SLIDE) -o $(DEMO_OUT)/tissue.geojson --mask $(DEMO_OUT)/tissue-mask.png --overwrite
	$(BIN)/wsi-ai tiles $(DEMO_SLIDE) --mpp 0.5 --size 224 -o $(DEMO_OUT)/grid.csv --preview $(DEMO_OUT)/grid.png --overwrite
	$(BIN)/wsi-ai score-he $(DEMO_SLIDE) --overlap 112 -o $(DEMO_OUT)/scores.csv --overwrite
	$(BIN)/wsi-ai stitch $(DEMO_OUT)/scores.csv --slide $(DEMO_SLIDE) -o $(DEMO_OUT)/heatmap --blend gaussian --downsample 16 --min-area 2000 --overwrite
	@echo "demo outputs are in $(DEMO_OUT)/"

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) bench-out .pytest_cache .mypy_cache .ruff_cache
