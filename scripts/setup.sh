#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with torch, sam2-prompt (editable, with
# its test extra) and Meta's SAM-2 (the oracle the tests and benchmarks compare against).
#   TORCH_SPEC   what to install for torch (default torch==2.13.0, the CPU build on this machine's
#                disk; on a GPU machine set it to your CUDA build, e.g. TORCH_SPEC=torch)
#   VENV         where the environment goes (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
# torch first, so nothing below pulls a multi-GB CUDA build by accident.
"$PY" -m pip install -q "$TORCH_SPEC"
"$PY" -m pip install -q -e '.[test]'
# ONNX export is an optional extra: its test skips (with the reason) when these do not install.
"$PY" -m pip install -q -e '.[onnx]' || echo "note: the onnx extra did not install; its test will skip"
"$PY" -c "import sam2" 2>/dev/null || \
  SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --no-build-isolation --no-deps sam2==1.1.0
"$PY" -c "import torch, sam2, sam2_prompt; print('set up: torch', torch.__version__, '| sam2-prompt', sam2_prompt.__version__)"
