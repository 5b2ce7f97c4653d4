# The commands the README names. Everything installs into .venv from this repository's own files.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medrecipes-installed
# pytest workers: the e2e tests train real models, so use every core
PYTEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo test test-nbs test-py test-trained train-all export check-sync bench clean docs docs-outputs readme

$(STAMP): pyproject.toml setup.py requirements-dev.txt $(wildcard csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -e .
	touch $@

install: $(STAMP)

## make demo: generated samples: the X-ray recipe on both splits, the four SAR codecs compared, the image-folder
## recipe on digits, ONNX exports checked with onnxruntime, and `medrecipes predict --cam` on the X-ray test split
demo: install
	$(BIN)/medrecipes synth btxrd data/btxrd_demo --n 600 --seed 0
	$(BIN)/medrecipes train-all xray --config-name xray_demo
	$(BIN)/medrecipes synth sar data/sar_demo --n 32 --n-valid 8 --n-test 4 --size 128 --seed 0 --mode realistic
	$(BIN)/medrecipes compare sar --config-name sar_demo trainer.progress=false
	$(BIN)/medrecipes synth digits data/digits_demo --seed 0
	$(BIN)/medrecipes train folder --config-name folder_demo trainer.progress=false
	$(BIN)/medrecipes export-onnx runs/folder_demo/checkpoints/best.pt
	$(BIN)/medrecipes export-onnx runs/sar_demo/attention/checkpoints/best.pt
	$(BIN)/python -c "import pandas as pd; s = pd.read_csv('runs/xray_demo/stratified/split.csv'); pd.DataFrame({'path': ['$(CURDIR)/data/btxrd_demo/images/' + i for i in s.image_id[s.split == 'test']]}).to_csv('runs/xray_demo/test_images.csv', index=False)"
	$(BIN)/medrecipes predict runs/xray_demo/stratified/checkpoints/best.pt runs/xray_demo/test_images.csv --cam --out runs/xray_demo/predict

## make test: notebooks (nbdev-test), the pytest suite, then the tests that assert what a short training reached
## (pytest marker `trained`) once more under a second seed
test: install test-nbs test-py test-trained

# The tests run in a private TMPDIR that is removed when they end, passed or failed: the notebooks' temporary folders,
# pytest's tmp_path folders and every subprocess's scratch files leave nothing behind in the machine's /tmp.
IN_SCRATCH = scratch=$$(mktemp -d "$${TMPDIR:-/tmp}/medrecipes-test.XXXXXX") && trap 'rm -rf "$$scratch"' EXIT && TMPDIR="$$scratch"
PYTEST_ARGS ?= tests

test-nbs: install
	@$(IN_SCRATCH) $(BIN)/nbdev-test --n-workers 2

test-py: install
	@$(IN_SCRATCH) $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## make test-trained SEED=k: the `trained` tests under seed k (default 1). A CPU's float path changes what a short
## training reaches; shake it on one machine with e.g. `ATEN_CPU_CAPABILITY=default make test-trained SEED=3`
## (also avx2, avx512). benchmarks/test_margins.py measures the margins over seeds and capabilities.
SEED ?= 1
test-trained: install
	@$(IN_SCRATCH) MEDRECIPES_TEST_SEED=$(SEED) $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m trained tests

## make train-all: both splits on the real BTXRD release (data/BTXRD, see medrecipes/configs/xray.yaml)
train-all: install
	$(BIN)/medrecipes train-all xray

## make export: regenerate medrecipes/ from the notebooks
export: install
	$(BIN)/nbdev-export

## make docs: the documentation site in _docs/ (Sphinx + myst-nb: the notebooks with their saved outputs, the API
## reference from the docstrings); nothing is executed
docs: install
	PYTHONPATH=$(CURDIR) $(BIN)/python docs/build.py _docs

## make docs-outputs NBS="nbs/16_xray.ipynb ...": run notebooks (their `#| slow` cells included) and save the outputs
## the site shows
docs-outputs: install
	PYTHONPATH=$(CURDIR) $(BIN)/python docs/run_notebooks.py $(NBS)

## make readme: README.md from nbs/index.ipynb (the site's home page)
readme:
	$(PYTHON) docs/readme.py

bench: install
	$(BIN)/python benchmarks/ssim.py
	$(BIN)/python benchmarks/cbam.py
	$(BIN)/python benchmarks/sar_step.py
	$(BIN)/python benchmarks/folder_precision.py
	$(BIN)/python benchmarks/ddp_scaling.py
	$(BIN)/python benchmarks/xray_throughput.py
	$(BIN)/python benchmarks/xray_data.py

clean:
	rm -rf build dist *.egg-info _proc _docs runs .pytest_cache

## make gpu-wheels: download, on a machine with internet, the wheels a GPU machine without internet lacks (Python 3.12,
## manylinux x86_64) into benchmarks/wheels/ (git-ignored; carry it to the GPU machine with the working tree)
.PHONY: gpu-wheels gpu-check
GPU_WHEELS ?= benchmarks/wheels
gpu-wheels:
	$(PYTHON) -m pip download --quiet --dest $(GPU_WHEELS) --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 pytest
	$(PYTHON) -m pip download --quiet --dest $(GPU_WHEELS) --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--no-deps pytorch-msssim fussim

## make gpu-check: on a GPU machine (PyTorch, Triton, timm; no fastai needed): installs the carried wheels, runs the
## CUDA kernel tests, benchmarks SSIM, CBAM and the SAR attention step, prints a table, writes CSV rows to $$OUT
gpu-check:
	PYTHONPATH=$(CURDIR) $(PYTHON) benchmarks/gpu_check.py --wheels $(GPU_WHEELS) $(GPU_CHECK_ARGS)
