# Two ways in: `make run` (the quickstart scenario on a local Ray) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench venv clean

$(BIN)/tierflow: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so nothing later pulls a CUDA build from the registry.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/tierflow

venv: $(BIN)/tierflow

run: venv
	$(BIN)/tierflow run examples/quickstart.yaml --out runs/quickstart --fresh

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: venv
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/flower_peer.py
	$(BIN)/python benchmarks/split_overhead.py
	$(BIN)/python benchmarks/placement.py
	$(BIN)/python benchmarks/plan_scale.py
	$(BIN)/python benchmarks/migration.py

clean:
	rm -rf $(VENV) runs .pytest_cache
