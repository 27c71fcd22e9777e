#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with torch, sam2-prompt (editable, with its test
# extra), Meta's SAM-2 1.1.0 and ultralytics 8.4 (the oracles the tests and benchmarks compare
# against; both without their dependencies, which would replace torch or need torchvision).
#   PYTHON          the interpreter for a new environment (default python3; 3.10 or newer)
#   VENV            where the environment goes (default .venv)
#   TORCH_PIP_ARGS  pip arguments for torch, word-split (default: torch==2.13.0, plus PyTorch's
#                   CPU index when there is no nvidia-smi, since PyPI's build is the multi-GB CUDA
#                   one). E.g. TORCH_PIP_ARGS="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
# A torch already in the environment at the wanted version is kept; later steps never replace it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TORCH_SPEC:-}" ]; then
  echo "setup.sh: TORCH_SPEC is no longer read; set TORCH_PIP_ARGS (pip arguments, word-split)" >&2
  exit 2
fi
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
    echo "setup.sh: ${PYTHON:-python3} is not Python 3.10 or newer, which sam2-prompt, torch" \
         "$TORCH_VERSION and sam2 1.1.0 need (set PYTHON=python3.11, for example)" >&2
    exit 2
  }
  "${PYTHON:-python3}" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip() { "$PY" -m pip "$@"; }
pip install -q --upgrade pip setuptools wheel

# torch first, alone, so that nothing below pulls a multi-GB CUDA build by accident.
torch_version() { "$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true; }
reachable() { "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$1" 2>/dev/null; }
if [ -n "${TORCH_PIP_ARGS:-}" ]; then
  read -r -a torch_args <<< "$TORCH_PIP_ARGS"
  pip install -q "${torch_args[@]}"
elif [ "$(torch_version | cut -d+ -f1)" != "$TORCH_VERSION" ]; then
  torch_args=("torch==$TORCH_VERSION")
  if command -v nvidia-smi > /dev/null; then
    :  # PyPI's torch is the CUDA build
  elif reachable "$CPU_INDEX/torch/"; then
    # pip takes the CPU build from there: its version, $TORCH_VERSION+cpu, sorts above PyPI's.
    torch_args+=(--extra-index-url "$CPU_INDEX")
  else
    echo "note: $CPU_INDEX is out of reach: torch comes from pip's configured indexes" \
         "(on plain PyPI that is the CUDA build; set TORCH_PIP_ARGS to choose another)"
  fi
  pip install -q "${torch_args[@]}"
fi
TORCH_INSTALLED=$(torch_version)
[ -n "$TORCH_INSTALLED" ] || { echo "setup.sh: torch did not install" >&2; exit 1; }
echo "torch==$TORCH_INSTALLED" > "$VENV/torch-constraint.txt"
keep_torch=(-c "$VENV/torch-constraint.txt")

pip install -q "${keep_torch[@]}" -e '.[test]'
# ONNX export is an optional extra: its test skips (with the reason) when these do not install.
pip install -q "${keep_torch[@]}" -e '.[onnx]' || echo "note: the onnx extra did not install; its test will skip"
# Meta's SAM-2 and ultralytics without their dependencies (sam2 builds no CUDA extension here).
# ultralytics' SAM-2 path imports numpy, pillow, opencv, pyyaml (the test extra) and torchvision,
# for which the tests use a stand-in (a CUDA torchvision cannot load with a CPU torch).
SAM2_BUILD_CUDA=0 pip install -q --no-build-isolation --no-deps sam2==1.1.0
pip install -q --no-deps "ultralytics==8.4.*"
"$PY" -c "import torch, sam2, sam2_prompt; print('set up: python', __import__('platform').python_version(),
  '| torch', torch.__version__, '| sam2-prompt', sam2_prompt.__version__)"
