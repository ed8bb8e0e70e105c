# Two commands from a fresh machine: `make serve` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= artifacts/model.safetensors
PORT ?= 8000

.PHONY: setup data model serve test lint bench soak docker-smoke clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

data: setup
	@bash scripts/get-dataset.sh $(PY)

$(MODEL):
	$(MAKE) data
	$(PY) -m training --out $(MODEL)

model: setup $(MODEL)

serve: model
	FASHION_MODEL_PATH=$(MODEL) $(VENV)/bin/fashion-serve --port $(PORT)

test: data
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: model
	$(PY) bench/training.py

# Tens of thousands of mixed requests against a real server: zero 5xx, every answer once, bounded RSS.
soak: model
	$(PY) bench/soak.py

# Build the image (../shared/tools/container: podman, offline), run it read-only, classify real images.
docker-smoke: model
	bash scripts/docker-smoke.sh

clean:
	rm -rf $(VENV) artifacts/*.safetensors artifacts/*.png
