# SegEarth-OV for QGIS: the one entry point. `make help` lists the targets.

SYSTEM_PYTHON ?= /usr/bin/python3
# Where `make install` links the plugin (QGIS's default profile); QGIS_PLUGINPATH=$(CURDIR) works too.
QGIS_PLUGIN_DIR ?= $(HOME)/.local/share/QGIS/QGIS3/profiles/default/python/plugins
QGIS_PROCESS ?= $(shell command -v qgis_process.bin || command -v qgis_process)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# WHEELHOUSE=DIR: the venv's packages are downloaded into DIR (kept) and installed from there, so that a venv made
# again downloads nothing twice (pip's own cache keeps nothing from an index that sends no caching headers).
WHEELHOUSE ?=
PIP_SOURCE := $(if $(WHEELHOUSE),--no-index --find-links $(WHEELHOUSE))
# make test-qgis: the Debian QGIS release (3.40: Debian 13; 3.44: sid) and pytest's arguments (default: see the script).
QGIS ?= 3.40
TESTS ?=
# QGIS (pytest-qgis) needs a display; run headless unless the caller set one.
export QT_QPA_PLATFORM ?= offscreen

.PHONY: help install system plugin test test-qgis coverage bench bench-large change-bench stress cluster-bench demo demo-change demo-sar package lint screenshot clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

install: $(STAMP) plugin ## venv + backend and test tools; links the plugin into the QGIS profile
system: ## the Debian packages QGIS needs (qgis, python3-qgis, python3-gdal, gdal-bin, xvfb), when missing
	@bash tools/system_packages.sh
$(STAMP): backend/pyproject.toml | system
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	# Keep the system numpy: QGIS's and GDAL's bindings are built against it.
	$(SYSTEM_PYTHON) -c "import numpy; print('numpy==' + numpy.__version__)" > $(VENV)/constraints.txt \
		|| : > $(VENV)/constraints.txt
	$(if $(WHEELHOUSE),$(PY) -m pip download -q -d $(WHEELHOUSE) -c $(VENV)/constraints.txt \
		"setuptools>=68" wheel "./backend[test]")
	$(PY) -m pip install -q $(PIP_SOURCE) -c $(VENV)/constraints.txt "setuptools>=68" wheel
	$(PY) -m pip install -q $(PIP_SOURCE) -c $(VENV)/constraints.txt --no-build-isolation -e "backend[test]"
	touch $(STAMP)

plugin: $(STAMP) ## link segearth_qgis into $(QGIS_PLUGIN_DIR) and enable it (QGIS and qgis_process)
	mkdir -p "$(QGIS_PLUGIN_DIR)"
	ln -sfn "$(CURDIR)/segearth_qgis" "$(QGIS_PLUGIN_DIR)/segearth_qgis"
	echo "$(CURDIR)/$(PY)" > segearth_qgis/backend_python.txt
	@if [ -z "$(QGIS_PROCESS)" ]; then \
		echo "plugin linked; qgis_process not found: enable SegEarth-OV in QGIS (Plugins > Manage and Install Plugins)"; \
	elif QT_QPA_PLATFORM=offscreen "$(QGIS_PROCESS)" plugins 2>/dev/null | grep -q '^\* segearth_qgis$$'; then \
		echo "plugin linked; it was already enabled"; \
	elif QT_QPA_PLATFORM=offscreen "$(QGIS_PROCESS)" plugins enable segearth_qgis > /dev/null 2>&1; then \
		echo "plugin linked and enabled"; \
	else echo "plugin linked; qgis_process could not enable it: enable SegEarth-OV in QGIS (Plugins > Manage and Install Plugins)"; fi

test: $(STAMP) ## the whole test suite (backend and plugin), in random order; QGIS in a throwaway profile
	$(PY) -m pytest

test-qgis: ## the tests against Debian's QGIS QGIS=3.40 (Debian 13) or 3.44 (sid) in a chroot outside the tree (root)
	bash tools/qgis_chroot.sh $(QGIS) $(TESTS)

coverage: $(STAMP) ## the test suite under coverage (backend processes and task threads included): report + coverage_out/html
	rm -rf coverage_out
	$(PY) -m coverage run -m pytest -q
	$(PY) -m coverage combine -q
	$(PY) -m coverage report
	$(PY) -m coverage html -q

bench: $(STAMP) ## speed / memory benchmark: table on stdout, JSON in bench_out/bench.json
	$(PY) -m segearth_backend bench --out bench_out/bench.json

bench-large: $(STAMP) ## a MP=64 megapixel raster through qgis_process, float32 and bfloat16: MP/min, peak memory of QGIS and the backend (bench_out/large.json)
	QT_QPA_PLATFORM=offscreen $(PY) tools/large_bench.py --megapixels $(or $(MP),64) --model $(or $(MODEL),vitb16) --out bench_out/large.json

change-bench: $(STAMP) ## the change job's first run and re-queries on the Köln pair (tiny and full-size models): bench_out/change.json
	QT_QPA_PLATFORM=offscreen $(PY) tools/change_bench.py --models $(or $(MODELS),tiny,vitb16) --cache-mb $(or $(CACHE_MB),default) --out bench_out/change.json

stress: $(STAMP) ## clients x requests against a real backend (answers checked) + the 254-class request: bench_out/stress.json
	$(PY) tools/stress.py --clients $(or $(CLIENTS),4) --requests $(or $(REQUESTS),5) --out bench_out/stress.json

cluster-bench: $(STAMP) ## serve against serve --ray with 1 and 2 replicas (full-size model, CPU): bench_out/cluster.json
	$(PY) tools/cluster_bench.py --model vitb16 --block $(or $(BLOCK),512) --blocks $(or $(BLOCKS),4) --out bench_out/cluster.json

lint: $(STAMP) ## ruff, mypy on both packages (Python 3.9 rules), the layering contracts (.importlinter), sizes
	$(PY) -m ruff check backend segearth_qgis tests tools docs resources
	$(PY) -m mypy segearth_qgis backend/segearth_backend
	PYTHONPATH=backend:. $(VENV)/bin/lint-imports .importlinter
	$(PY) tools/check_sizes.py

demo: $(STAMP) ## segment the Köln sample headless (qgis_process): demo_out/ GeoTIFF, QML, GeoPackage, PNG
	QT_QPA_PLATFORM=offscreen $(PY) tools/demo.py --out demo_out

demo-sar: $(STAMP) ## the SAR demo: the synthetic Sentinel-1-like sample with the SAR model, into demo_sar_out/
	QT_QPA_PLATFORM=offscreen $(PY) tools/demo.py --sar --out demo_sar_out

demo-change: $(STAMP) ## change between two dates on a seeded pair made from the Köln tile (qgis_process): demo_out/change/
	QT_QPA_PLATFORM=offscreen $(PY) tools/demo_change.py --out demo_out

package: $(STAMP) ## dist/: the plugin zip (with its backend) and plugins.xml of a custom plugin repository
	$(PY) tools/package.py --out dist

screenshot: $(STAMP) ## docs/screenshot.png: the dock and a styled result on the sample raster, under Xvfb
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) docs/screenshot.py

clean: ## remove caches and reports (keeps the venv)
	rm -rf bench_out demo_out demo_sar_out dist coverage_out .pytest_cache .mypy_cache .ruff_cache .qgis-settings
	find . -name __pycache__ -not -path './$(VENV)/*' -exec rm -rf {} +
