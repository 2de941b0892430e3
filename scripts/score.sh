#!/usr/bin/env bash
# Score an archive with one process per GPU of this machine (or NPROC CPU processes):
#   scripts/score.sh model_dir=exports/tfns input='news/2024-*.jsonl.gz' output_dir=scored/2024 inference.precision=bf16
# What to change: NPROC (default: number of visible GPUs, else 1); any inference.* override as arguments.
# The same command can be rerun after a crash or kill: finished work units are skipped.
# With accelerate instead: accelerate launch --num_processes "$NPROC" -m inference.score ...
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NPROC:-}" ]; then
  NPROC=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
exec torchrun --standalone --nproc_per_node="$NPROC" -m inference.score "$@"
