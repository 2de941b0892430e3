#!/usr/bin/env bash
# The CPU benchmarks behind docs/experiments/scoring.md, in one run on an otherwise idle machine (~15 min on 2 cores):
#   bash scripts/bench_cpu.sh
# Writes docs/bench_inference_cpu*.json; copy the figures into docs/experiments/scoring.md with the machine line.
set -euo pipefail
cd "$(dirname "$0")/.."
# Full articles (up to inference.max_chunks=16 chunks of 128 tokens) and a corpus 10x larger for memory.
python scripts/bench_inference.py --docs 1500 --scale 10 --precision bf16 --report docs/bench_inference_cpu.json
# The same text budget as the pipeline, which truncates every document at 512 tokens (4 chunks of 128).
python scripts/bench_inference.py --docs 1500 --scale 0 --precision bf16 --scorer-arg inference.max_chunks=4 \
  --report docs/bench_inference_cpu_maxchunks4.json
