# SegEarth-OV for QGIS: the one entry point. `make help` lists the targets.

SYSTEM_PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# QGIS (pytest-qgis) needs a display; run headless unless the caller set one.
export QT_QPA_PLATFORM ?= offscreen

.PHONY: help install test bench lint screenshot clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

install: $(STAMP) ## venv from /usr/bin/python3 (sees QGIS, GDAL, Debian numpy) + backend and test tools
$(STAMP): backend/pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	# Keep the system numpy: QGIS's and GDAL's bindings are built against it.
	$(SYSTEM_PYTHON) -c "import numpy; print('numpy==' + numpy.__version__)" > $(VENV)/constraints.txt \
		|| : > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt "setuptools>=68" wheel
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-build-isolation -e "backend[test]"
	touch $(STAMP)

test: install ## the whole test suite (backend and plugin)
	$(PY) -m pytest

bench: install ## speed / memory benchmark: table on stdout, JSON in bench_out/bench.json
	$(PY) -m segearth_backend bench --out bench_out/bench.json

lint: install ## ruff on everything, mypy on the backend
	$(PY) -m ruff check backend segearth_qgis tests
	$(PY) -m mypy backend/segearth_backend

screenshot: install ## docs/screenshot.png: the dock and a styled result on the sample raster, under Xvfb
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/screenshot.py

clean: ## remove caches and reports (keeps the venv)
	rm -rf bench_out .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
