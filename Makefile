# Set-up and checks. Every target creates .venv on first use, so `make test` works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo bench bench-caption bench-shapes bench-cache bench-batch bench-feed bench-ray bench-coverage bench-serve bench-views bench-report clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A CPU build of torch first: the project's own range then installs nothing more (fast, small).
	$(BIN)/python -m pip install -q "$(TORCH_CPU)" || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[dev,parquet,ray,serve]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench train
	$(BIN)/ruff format --check src tests bench train
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench train
	$(BIN)/ruff check --fix src tests bench train

# The demo needs no network: the bundled shapes models (models/, trained by train/) on samples/.
DEMO_IMAGE ?= samples/shapes-red-circle.png
OFFLINE := HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1

demo: $(STAMP)
	$(OFFLINE) $(BIN)/mmcli classify $(DEMO_IMAGE) --model shapes-clip --labels-file samples/shapes-labels.txt --top-k 3 --format table
	$(OFFLINE) $(BIN)/mmcli caption $(DEMO_IMAGE) --model shapes-llava --format table
	$(OFFLINE) $(BIN)/mmcli vqa $(DEMO_IMAGE) --model shapes-blip2 --question "What color is the shape?" --question "What shape is it?" --format table

bench: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/classify.py

bench-caption: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/caption.py

bench-shapes: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/shapes_accuracy.py

bench-cache: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/cache.py

bench-batch: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/batch.py

bench-feed: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/feed.py

bench-serve: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/serve.py

bench-views: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/views.py

bench-report: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/report.py

bench-ray: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/ray.py

# Every image-text-to-text model type of the installed transformers, built tiny and run through mmcli.
# Resumes from bench/out/coverage/results.jsonl; COVERAGE_ARGS="--fresh" or "--types llava,qwen2_vl".
bench-coverage: $(STAMP)
	$(OFFLINE) $(BIN)/python bench/coverage.py $(COVERAGE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
