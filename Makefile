# Set-up and checks. Every target creates .venv on first use, so `make test` works on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A CPU build of torch first: the project's own range then installs nothing more (fast, small).
	$(BIN)/python -m pip install -q "$(TORCH_CPU)" || $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Until the bundled offline models exist, the demo builds a tiny random-weight CLIP locally: the plumbing
# is real (save_pretrained -> mmcli --model DIR), the scores are not meaningful.
DEMO_MODEL := .demo/tiny-clip
$(DEMO_MODEL)/config.json: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -c "from mmcli.testing import build_clip; build_clip('$(DEMO_MODEL)')"

demo: $(DEMO_MODEL)/config.json
	HF_HUB_OFFLINE=1 $(BIN)/mmcli classify samples/ --labels "red circle,blue square,green triangle" \
		--model $(DEMO_MODEL) --format table

bench: $(STAMP)
	HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/python bench/classify.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache build dist
