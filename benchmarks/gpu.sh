#!/usr/bin/env bash
# Run the full benchmark suite on CUDA (about 3-5 minutes on one recent card) and write
# the same tables and chart as the CPU run to benchmarks/results/<card>/.
#
#   benchmarks/gpu.sh                  # full suite on cuda
#   benchmarks/gpu.sh --scenario bert  # extra arguments go to `python -m benchmarks`
#   DEVICE=cpu benchmarks/gpu.sh --quick --out /tmp/bench   # dry run of this script without a GPU
#
# It uses $PYTHON if set, else the first of .venv/bin/python and python3 whose torch
# sees a GPU (the project's .venv pins a CPU build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${DEVICE:-cuda}

candidates=("${PYTHON:-}" .venv/bin/python python3)
python=""
for candidate in "${candidates[@]}"; do
  [ -n "$candidate" ] || continue
  command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
  if [ "$device" = cpu ] || "$candidate" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "gpu.sh: no Python here has a torch that sees a CUDA device. Install a CUDA build of torch" >&2
  echo "        (plus transformers and matplotlib), or set PYTHON=/path/to/python." >&2
  exit 3
fi
for module in transformers matplotlib; do
  "$python" -c "import $module" 2>/dev/null || echo "gpu.sh: warning: $module is missing; its parts of the suite will be skipped" >&2
done
"$python" -c 'import torch; print("gpu.sh: torch", torch.__version__, "on", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the library itself, even without `pip install -e .`
exec "$python" -m benchmarks --device "$device" "$@"
