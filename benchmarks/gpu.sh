#!/usr/bin/env bash
# Run every registered benchmark scenario on CUDA - the same scenarios as the CPU run
# (frozen backbones, partial BERT, tied GPT-2, conv-BN middle, torch.compile, gradient
# checkpointing with its recompute counts and saved-activation bytes, selectors, cached
# prefixes, lean middles, rows: every family in benchmarks/harness/registry.py) plus the
# GPU-only ones at the sizes people train (scenarios/real_sizes.py: ViT-B/16 probe, BERT-base,
# GPT-2 small, ResNet-50 lean) - and write the same tables, verdicts and chart to
# benchmarks/results/<card>/, after benchmarks/gpu_check.py passed on the card (it asserts,
# among others, that a cached step keyed by sample ids never synchronises). Distributed runs
# are not part of it.
#
#   QUICK=1 benchmarks/gpu.sh          # --quick: everything, for a lent card (estimated ~8 min on an H100)
#   benchmarks/gpu.sh                  # full rounds (~20 min)
#   benchmarks/gpu.sh --scenario checkpointing   # extra arguments go to `python -m benchmarks`
#   DEVICE=cpu benchmarks/gpu.sh --quick --scenario seed --out /tmp/bench   # dry run without a GPU
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
  "$python" -c "import $module" 2>/dev/null || echo "gpu.sh: warning: $module is missing; the scenarios that require it will be left out" >&2
done
"$python" -c 'import torch; print("gpu.sh: torch", torch.__version__, "on", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the library itself, even without `pip install -e .`
"$python" -c 'import sys; sys.path.insert(0, "."); from benchmarks.harness import scenarios
print("gpu.sh: scenarios:", " ".join(s.key for s in scenarios()))'
# The library's promises on the card first (cuDNN lean convolutions, bf16 storage across moves,
# cache stores and invalidation, a compiled step): timing a broken library would be pointless.
GPU_CHECK_DEVICE=$device "$python" benchmarks/gpu_check.py
extra=()
[ -n "${QUICK:-}" ] && extra+=(--quick)
# The memory worker's peak figure on CUDA is max_memory_allocated (exact); saved-activation bytes are
# measured for every variant either way.
exec "$python" -m benchmarks --device "$device" "${extra[@]}" "$@"
