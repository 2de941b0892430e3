"""inference.signals as users run it: score the embedded sample with its times kept, then make signals."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, write_jsonl

pytestmark = pytest.mark.slow


def _cli(module, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300
    )


def test_signals_on_a_scored_sample_without_prices(exported, tmp_path):
    rows = [json.loads(line) for line in (REPO / "data/sample/validation.jsonl").read_text().splitlines()]
    rows.append({"id": "bad-time", "text": "$OKHL wins a contract", "published_at": "someday"})
    source = write_jsonl(tmp_path / "news.jsonl", rows)
    scored = tmp_path / "scored"
    proc = _cli(
        "inference.score", f"model_dir={exported['merged']}", f"input={source}", f"output_dir={scored}",
        "inference.keep_columns=[published_at,text]", "inference.progress=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "signals"
    proc = _cli("inference.signals", f"scores={scored}", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    signals = pd.read_parquet(out / "signals.parquet")
    assert len(signals) and {"n_articles", "sentiment_mean", "news_volume_z"} <= set(signals.columns)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert any("bad timestamp 'someday'" in e["reason"] for e in errors)  # the job went on
    assert (out / "report.html").is_file() and "Market impact" in (out / "report.html").read_text()
    assert "(ticker, session) rows" in proc.stdout and "rows not placed" in proc.stdout


def test_signals_typo_stops_with_one_line(tmp_path):
    proc = _cli(
        "inference.signals", f"scores={tmp_path}", f"output_dir={tmp_path}/o", "+evaluation.horizon=3"
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "evaluation.horizon" in lines[0]
