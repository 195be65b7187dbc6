#!/usr/bin/env bash
# GPU check for latentserve: kernel tests on CUDA, `python -m kernels.bench` at SmolLM2-135M,
# Qwen2.5-7B and Llama-3.1-8B LM-head shapes, and the model runner with latent capture on a
# random-weight 7B-shaped Llama in bf16; one table at the end (benchmarks/gpu_check.py).
#
# How to run it, from a clone on a CUDA machine with torch, triton and transformers (pytest
# too for the kernel tests; nothing is downloaded, nothing is installed):
#
#     bash benchmarks/gpu_check.sh            # under 8 minutes; --quick for a shorter run
#     PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Exit status: 0 all parts passed, 1 a part failed, 2 no CUDA device (at once, one line on
# stderr), 124 the whole run passed its 8-minute limit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
unset TRITON_INTERPRET
exec timeout --kill-after=10 470 "$PYTHON" -m benchmarks.gpu_check "$@"
