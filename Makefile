# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CI and this Makefile pin the CPU build of torch; pyproject.toml declares a range for users.
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint venv clean speech-demo

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

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-out
