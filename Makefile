# Quick start:  make run   (install + cluster -> train -> denoise -> evaluate on the built-in data)
#               make test  (install + test suite)
PY ?= python3
# CPU-only by default: this pin resolves to a small CPU wheel on CPU machines. GPU users:
# install the CUDA torch from pytorch.org first, then `make install TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test test-fast lint format bench clean

install:
	$(PY) -m pip install -q $(if $(TORCH_SPEC),"$(TORCH_SPEC)") -e ".[dev]"

run: install
	$(PY) cluster.py
	$(PY) train.py experiment=cpu_all_clusters
	$(PY) denoise.py
	$(PY) evaluate.py

test: install
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

lint:
	ruff check . && ruff format --check .

format:
	ruff check --fix . && ruff format .

bench:
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf outputs multirun lightning_logs .pytest_cache
