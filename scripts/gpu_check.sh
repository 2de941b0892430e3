#!/usr/bin/env bash
# The one-shot GPU check (scripts/gpu_check.py has the stages): install the kit's wheels offline, then run
# every stage under its own timeout, going on after a failure, within 8 minutes, writing OUT/results.json
# and OUT/log.txt after every stage.
#   python scripts/gpu_kit.py prepare .gpu          # here, with pip (once)
#   bash scripts/gpu_check.sh .gpu OUT              # on the GPU machine (no network needed)
#   bash scripts/gpu_check.sh --cpu .gpu OUT        # every stage at toy size on the CPU (CI proves the script)
set -uo pipefail
CPU=""
if [[ "${1:-}" == "--cpu" ]]; then CPU="--cpu"; shift; fi
if [[ $# -lt 2 ]]; then
    echo "usage: bash scripts/gpu_check.sh [--cpu] KIT_DIR OUT_DIR   (KIT_DIR from: python scripts/gpu_kit.py prepare KIT_DIR)" >&2
    exit 2
fi
KIT="$(cd "$1" && pwd)" || { echo "gpu_check: kit folder '$1' not found; run: python scripts/gpu_kit.py prepare $1" >&2; exit 2; }
mkdir -p "$2" && OUT="$(cd "$2" && pwd)"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
if [[ ! -f "$KIT/minilm/model.safetensors" ]]; then
    echo "gpu_check: $KIT has no minilm/ model copy; run: python scripts/gpu_kit.py prepare $KIT" >&2
    exit 2
fi
if [[ -z "$CPU" && -d "$KIT/wheels" ]]; then
    # What the GPU machine lacks, from the kit only (--no-index): a failed install is an error, not hidden.
    SITE="${TMPDIR:-/tmp}/newsimpact-gpu-site"
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/wheels/*.whl >"$OUT/install.txt" 2>&1; then
        echo "gpu_check: installing the kit's wheels failed (see $OUT/install.txt)" >&2
        cat "$OUT/install.txt" >&2
        exit 1
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
exec "$PY" scripts/gpu_check.py --kit "$KIT" --out "$OUT" $CPU "${@:3}"
