# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CI and this Makefile pin the CPU build of torch; pyproject.toml declares a range for users.
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint venv clean speech-demo test-gpu gpu-check

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[plot,sklearn,dev,data,export,stream]' $(TORCH_PIN)
	$(BIN)/torchmdn kernel || true  # compile the CPU likelihood kernel once (optional)
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/torchmdn demo --out demo-out

# eSpeak NG comes from PyPI (espeakng-loader, in the speech extra); no apt needed
speech-demo: venv
	$(BIN)/pip install -q -e '.[speech]' $(TORCH_PIN)
	$(BIN)/torchmdn demo speech --out demo-out/speech

test: venv
	$(BIN)/python -m pytest -q

# On a machine with a CUDA GPU and torch installed (a bare image: no venv, no network, no pip):
# the CUDA cases of the test suite, then the GPU benchmarks in quick mode. GPU_PYTHON is the
# interpreter whose torch has CUDA; the CPU kernel is left off (the image may lack a compiler).
GPU_PYTHON ?= python3
GPU_ENV := PYTHONPATH=src TORCHMDN_KERNEL=0

test-gpu:
	@$(GPU_PYTHON) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else \
		'no CUDA device for torch ' + torch.__version__ + ': the gpu tests need one')"
	$(GPU_ENV) $(GPU_PYTHON) -m pytest -q -m gpu -p no:cacheprovider --durations=15 tests

gpu-check: test-gpu
	$(GPU_ENV) $(GPU_PYTHON) benchmarks/gpu.py --quick

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out
