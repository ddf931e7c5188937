# pneumo-edge: every entry point a person or CI needs.
#   make install   create .venv with the pneumo command and the extras this machine can use
#   make demo      train -> export -> edge inference -> benchmark on SYNTHETIC phantoms
#   make demo DATA=../shared/data/chest_xray   the same on the real data set
#   make test      the whole CPU test suite (what CI runs)
#   make test-fast the suite without the slow and TensorRT tests
#   make test-trt  the real TensorRT tests (on a Jetson or any machine with TensorRT)
#   make lint      ruff check, ruff format --check, mypy
#   make bench     benchmarks this machine supports, written under benchmarks/results/
#   make clean     remove the demo folder and the tool caches (never runs/ or bundles/)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?=
DEMO   ?= demo
# The deployed default is the model issue 6's selection rule chose in session 9 (reports/best_model.md,
# "Session 9"): `lite0` (EfficientNet-Lite0 blocks, ImageNet weights), seed 0 on validation
# split 0, its threshold the recipe's rule (sensitivity:0.95 on shape-pooled validation).
# Several SEEDS train one run each and bundle their average (session 8's default was
# ARCH=dsconv SEEDS="0 2 3").
ARCH   ?= lite0
SEEDS  ?= 0
EPOCHS ?=
EXTRAS ?= train,dev,bench,dicom
VENV_FLAGS ?=
# make test-trt runs in the Python that sees TensorRT, never in make install's venv: on a Jetson,
# activate the --system-site-packages venv of deploy/JETSON.md step 2 first (TensorRT, pycuda and
# GStreamer OpenCV come from JetPack, not the package index). TRT_PYTHON=... picks another Python.
TRT_PYTHON ?= python3

.PHONY: install demo test test-fast test-trt lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

# Without DATA the demo makes SYNTHETIC phantoms, and every output says so.
# Steps: (data) -> train -> export bundle -> golden self-test -> predict -> benchmark.
demo: install
	@set -e; data='$(DATA)'; calib=512; precisions=fp32,fp16,int8; \
	if [ -z "$$data" ]; then data='$(DEMO)/synthetic'; calib=160; \
	  if [ "$(ARCH)" = dsconv ]; then precisions=fp32,fp16; \
	    echo "demo: SYNTHETIC data; INT8 left out: dsconv's phantom model's INT8 outputs differ from FP32 by more than a golden self-test accepts (README, export)"; \
	  else echo "demo: SYNTHETIC data"; fi; \
	  $(BIN)/pneumo data synth "$$data" --per-class 200; fi; \
	members=''; for seed in $(SEEDS); do \
	  $(BIN)/pneumo train --arch $(ARCH) --data "$$data" -o $(DEMO)/run-seed$$seed --overwrite \
	    --seed $$seed --split-seed 0 $(if $(EPOCHS),--epochs $(EPOCHS),); \
	  members="$$members $(DEMO)/run-seed$$seed"; done; \
	set -- $$members; \
	run="$$1"; if [ $$# -gt 1 ]; then run=$(DEMO)/run; \
	  $(BIN)/pneumo train ensemble "$$@" --out "$$run" --overwrite; fi; \
	$(BIN)/pneumo export bundle "$$run" -o $(DEMO)/bundle --overwrite --calib-size $$calib --precisions $$precisions; \
	$(BIN)/pneumo edge build $(DEMO)/bundle --backend ort-cpu; \
	$(BIN)/pneumo edge predict $(DEMO)/bundle "$$data/test" -o $(DEMO)/predictions.csv --csv --overwrite; \
	$(BIN)/pneumo bench $(DEMO)/bundle --keras "$$run" --batch 1,8 --duration 2 -o $(DEMO)/bench --overwrite; \
	echo "demo: model $$run (seeds $(SEEDS)), bundle $(DEMO)/bundle, predictions $(DEMO)/predictions.csv, benchmark $(DEMO)/bench"

test: install
	$(BIN)/python -m pytest -m "not trt" -q

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not trt" -q

test-trt:
	@$(TRT_PYTHON) -c "import pytest, numpy, cv2, edge_runtime" 2>/dev/null || { echo "make test-trt: $(TRT_PYTHON) lacks pytest or pneumo-edge; activate the venv of deploy/JETSON.md step 2 and run: pip install -e '.[dev]'" >&2; exit 2; }
	PNEUMO_REQUIRE_TRT=1 $(TRT_PYTHON) -m pytest -m "trt or gpu" -q -rs

lint: install
	$(BIN)/ruff check train export edge_runtime benchmarks tests
	$(BIN)/ruff format --check train export edge_runtime benchmarks tests
	$(BIN)/mypy train export edge_runtime benchmarks

bench: install
	$(BIN)/pneumo bench --auto -o benchmarks/results

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache .mypy_cache
