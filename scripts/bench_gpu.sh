#!/usr/bin/env bash
# One prepared GPU benchmark run (< 8 minutes on one H100): scorer vs HF pipeline, bf16, on MiniLM and
# on a random-initialised BERT-base of the same layout, plus the roofline fraction. Results land in
# $OUT (or docs/) as JSON; copy the figures into docs/BENCHMARKS.md with the machine line.
#   bash scripts/bench_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-docs}"
mkdir -p "$DEST"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$DEST/gpu.txt"
pip install -q -e . 2>/dev/null || true
python scripts/bench_inference.py --docs 20000 --scale 0 --precision bf16 \
  --scorer-arg inference.batch_tokens=131072 --scorer-arg inference.max_batch_size=1024 \
  --batch-size 256 --report "$DEST/bench_gpu_minilm.json"
python scripts/make_random_model.py --layout bert-base --output /tmp/bert_base_random
python scripts/bench_inference.py --docs 20000 --scale 0 --precision bf16 --base-model /tmp/bert_base_random \
  --scorer-arg inference.batch_tokens=131072 --scorer-arg inference.max_batch_size=1024 \
  --batch-size 256 --report "$DEST/bench_gpu_bert_base.json"
