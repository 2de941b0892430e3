#!/usr/bin/env bash
# The wheel as a new user installs it: build it, install it (not editable) into a fresh virtual environment,
# and from a folder outside the checkout print a news card and score with the packaged model, then train 5
# steps, export, and score a one-line jsonl with the `newsimpact` command. CI runs this (.ci/run); by hand: scripts/wheel_smoke.sh [WORK_DIR]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q torch==2.13.0   # the CPU build (a bare torch pulls CUDA)
"$work/venv/bin/python" -m pip wheel -q --no-deps --wheel-dir "$work/dist" "$repo"
"$work/venv/bin/python" -m pip install -q "$work"/dist/newsimpact-*.whl
cd "$work"   # outside the checkout: nothing may come from it
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nsi="$work/venv/bin/newsimpact"
"$work/venv/bin/python" - <<'PY'
import inference, training, newsimpact
for module in (inference, training, newsimpact):
    assert "site-packages" in module.__file__, f"{module.__name__} imported from {module.__file__}"
print("imported from the installed wheel:", newsimpact.__file__)
PY
"$nsi" --help > help.txt && grep -q "impact-labels" help.txt && head -3 help.txt
# The packaged model, with no training run: a news card, and scoring without model_dir (default: card)
if grep -q '"card"' "$repo/newsimpact/models/models.json" 2>/dev/null; then   # the checkout ships it: so must the wheel
    "$nsi" card "Acme Corp (NASDAQ: ACME) beats estimates and raises guidance" | tee card.txt
    grep -q "sentiment" card.txt && grep -q "ACME" card.txt
    echo '{"id": "c1", "text": "Acme Corp (NASDAQ: ACME) misses estimates and cuts its outlook"}' > card.jsonl
    "$nsi" score input=card.jsonl output_dir=scored_card inference.progress=false
    "$work/venv/bin/python" -c "import json; m = json.load(open('scored_card/manifest.json')); assert m['model']['name'] == 'card' and m['scored'] == 1, m['model']"
else
    echo "no packaged model 'card' in this build: skipping the card checks"
fi
"$nsi" train run_dir=r trainer.max_steps=5 trainer.enable_progress_bar=false
"$nsi" export run_dir=r output_dir=m
echo '{"id": "1", "text": "Acme Corp (NASDAQ: ACME) beats estimates and raises guidance"}' > one.jsonl
"$nsi" score model_dir=m input=one.jsonl output_dir=scored inference.progress=false
"$work/venv/bin/python" - <<'PY'
import pyarrow.parquet as pq, glob
rows = pq.read_table(glob.glob("scored/part-*.parquet")).to_pylist()
assert len(rows) == 1 and rows[0]["id"] == "1" and rows[0]["tickers"][0]["ticker"] == "ACME", rows
print("wheel smoke test passed:", rows[0]["sentiment"], round(rows[0]["impact"], 3))
PY
