#!/usr/bin/env bash
# Train on every GPU of this machine with Lightning DDP:
#   scripts/train.sh experiment=tfns_minilm model=deberta_v3_base
# What to change: add Hydra overrides as arguments (model=..., data=..., trainer.max_epochs=...);
# DEVICES=4 limits the GPUs used; TRAINER=fsdp (or deepspeed) shards large backbones.
# Lightning starts one process per GPU itself, so this is a plain `python -m`, not torchrun.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES="${DEVICES:--1}"
TRAINER="${TRAINER:-ddp}"
exec python -m training.train trainer="$TRAINER" trainer.devices="$DEVICES" "$@"
