#!/usr/bin/env bash
# Scoring on a Ray cluster (inference.backend=ray: an actor pool over Ray Data, one actor per GPU):
#   scripts/ray_score.sh model_dir=/shared/models/tfns input='s3://bucket/news/*.parquet' output_dir=/shared/scored/run1
# Run it on a node of a running Ray cluster (`ray start --head` on one node, `ray start --address=HEAD:6379`
# on the others; under SLURM: srun one of each, as in Ray's SLURM guide). output_dir must be a folder every
# node sees; rerunning the command after a failure scores only what is not done.
# What to change: RAY_ADDRESS (default: the cluster this node is in); inference.ray.* for actors per GPU
# (gpus_per_actor=0.5: two per GPU) or CPU-only clusters (gpus_per_actor=0 cpus_per_actor=4).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m inference.score inference.backend=ray "inference.ray.address=${RAY_ADDRESS:-auto}" "$@"
