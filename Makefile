# Quick start:  make run   (install + cluster -> train -> denoise -> evaluate on the built-in data)
#               make test  (install + test suite)
# Everything runs in the project's own virtual environment (.venv), so a system python that
# refuses global installs (PEP 668, e.g. Debian's) works too. By hand: `. .venv/bin/activate`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only by default: this pin resolves to a small CPU wheel on CPU machines. GPU users:
# install the CUDA torch from pytorch.org into .venv first, then `make install TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test test-fast lint format bench results clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml changes (the stamp file records the last install).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_SPEC),"$(TORCH_SPEC)") -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) cluster.py
	$(PY) train.py experiment=cpu_all_clusters
	$(PY) denoise.py
	$(PY) evaluate.py

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench: install
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Regenerates docs/results/*.md, the reports the README quotes (about 7 x `make run`).
results: install
	$(PY) cluster.py && $(PY) train.py experiment=cpu_all_clusters
	$(PY) evaluate.py results_md=docs/results/default_noise.md
	$(PY) cluster.py data.noise_scale=5 && $(PY) train.py experiment=cpu_all_clusters data.noise_scale=5
	$(PY) evaluate.py data.noise_scale=5 results_md=docs/results/noise_x5.md
	for d in gaussian student_t jumps outliers factors; do \
	  $(PY) cluster.py data.noise_scale=5 data.noise_dist=$$d && \
	  $(PY) train.py experiment=cpu_all_clusters data.noise_scale=5 data.noise_dist=$$d && \
	  $(PY) evaluate.py data.noise_scale=5 data.noise_dist=$$d \
	    results_md=docs/results/noise_x5_$$d.md || exit 1; \
	done

clean:
	rm -rf outputs multirun lightning_logs .pytest_cache
