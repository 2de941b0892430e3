"""Event sessions and abnormal returns on small synthetic calendars, plus the real-data reproductions."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SHARED_DATA
from training.config import ConfigError
from training.impact_labels import ImpactLabelsConfig, NewsColumns, apply_calibration, build_calibration, run

# Mon 2024-01-01 is a holiday (no session); sessions: Fri Dec 29, Tue 2 .. Fri 5, Mon 8, Tue 9.
SESSIONS = ["2023-12-29", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"]
AAA = [100.0, 100.0, 110.0, 99.0, 99.0, 108.9, 108.9]
BBB = [50.0, 50.0, 50.0, 55.0, 55.0, 55.0, 60.5]


@pytest.fixture()
def market(tmp_path):
    prices = pd.DataFrame(
        [("AAA", d, p) for d, p in zip(SESSIONS, AAA)] + [("BBB", d, p) for d, p in zip(SESSIONS, BBB)],
        columns=["ticker", "date", "adj_close"],
    )
    prices.to_parquet(tmp_path / "prices.parquet")
    return tmp_path


def _label(market, news_rows, **overrides):
    (market / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in news_rows))
    config = ImpactLabelsConfig(
        news=str(market / "news.jsonl"),
        prices=str(market / "prices.parquet"),
        output=str(market / "out.parquet"),
        **overrides,
    )
    summary = run(config)
    out = pd.read_parquet(market / "out.parquet")
    errors = [json.loads(line) for line in (market / "out.errors.jsonl").read_text().splitlines()]
    assert summary["labelled"] + summary["errors"] == summary["rows_read"]
    return out, errors


def test_after_close_weekend_holiday_and_date_only(market):
    rows = [
        {"text": "intraday", "ticker": "AAA", "date": "2024-01-03 10:30"},  # -> Wed 3 (same session)
        {"text": "after close", "ticker": "AAA", "date": "2024-01-03 16:05"},  # -> Thu 4
        {"text": "utc evening", "ticker": "AAA", "date": "2024-01-03T20:30:00+00:00"},  # 15:30 NY -> Wed 3
        {"text": "saturday", "ticker": "AAA", "date": "2024-01-06 09:00"},  # -> Mon 8
        {"text": "holiday", "ticker": "AAA", "date": "2024-01-01"},  # date-only on a holiday -> Tue 2
        {"text": "date only", "ticker": "AAA", "date": "2024-01-04"},  # same -> Thu 4
    ]
    out, errors = _label(market, rows, window=[0, 0], benchmark="none")
    assert not errors
    sessions = dict(zip(out["text"], out["event_session"]))
    assert sessions == {
        "intraday": "2024-01-03", "after close": "2024-01-04", "utc evening": "2024-01-03",
        "saturday": "2024-01-08", "holiday": "2024-01-02", "date only": "2024-01-04",
    }  # fmt: skip
    # [0, 0]: close of the previous session to close of the event session.
    assert out.set_index("text").loc["intraday", "return"] == pytest.approx(0.10)
    assert out.set_index("text").loc["after close", "return"] == pytest.approx(-0.10)


def test_next_session_for_date_only_like_stocknet(market):
    out, _ = _label(
        market,
        [{"text": "x", "ticker": "AAA", "date": "2024-01-04"}],
        window=[0, 0],
        date_only_session="next",
        benchmark="none",
    )
    assert out["event_session"].tolist() == ["2024-01-05"] and out["return"].iloc[0] == pytest.approx(0.0)


def test_equal_weighted_benchmark_and_two_session_window(market):
    out, _ = _label(market, [{"text": "x", "ticker": "AAA", "date": "2024-01-04 09:00"}], window=[0, 1])
    # AAA: close(Jan 3)=110 -> close(Jan 5)=99: -10%. Benchmark: mean daily returns of AAA and BBB on
    # Jan 4 (-10%, +10%) and Jan 5 (0%, 0%) compounded: 0%.
    row = out.iloc[0]
    assert row["return"] == pytest.approx(-0.10) and row["benchmark_return"] == pytest.approx(0.0)
    assert row["abnormal_return"] == pytest.approx(-0.10)
    excl, _ = _label(
        market, [{"text": "x", "ticker": "AAA", "date": "2024-01-04 09:00"}], window=[0, 1], exclude_self=True
    )
    assert excl["benchmark_return"].iloc[0] == pytest.approx(0.10)  # BBB alone


def test_unlabelable_rows_go_to_errors_with_reasons(market):
    rows = [
        {"text": "ok", "ticker": "AAA", "date": "2024-01-03"},
        {"text": "unknown", "ticker": "ZZZ", "date": "2024-01-03"},
        {"text": "bad time", "ticker": "AAA", "date": "14 HOURS AGO"},
        {"text": "too late", "ticker": "AAA", "date": "2024-01-09"},  # window needs Jan 10
        {"text": "too early", "ticker": "AAA", "date": "2023-12-01"},  # window needs the close before Dec 29
        {"text": None, "ticker": "AAA", "date": "2024-01-03"},
        {"text": "list", "ticker": ["AAA", "BBB"], "date": "2024-01-03"},
    ]
    out, errors = _label(market, rows, window=[0, 1])
    reasons = [e["reason"] for e in errors]
    assert len(out) == 3 and len(errors) == 5
    assert any("unknown ticker 'ZZZ'" in r for r in reasons) and any("bad timestamp" in r for r in reasons)
    assert sum("no prices" in r for r in reasons) == 2 and any("text" in r for r in reasons)
    assert sorted(out.loc[out["text"] == "list", "ticker"]) == ["AAA", "BBB"]


def test_impact_is_the_rank_and_the_calibration_reapplies():
    values = np.array([0.0, 0.01, 0.02, 0.03, 0.04])
    calib = build_calibration(values, 101)
    impact = apply_calibration(values, calib)
    assert impact[0] == pytest.approx(0.0) and impact[-1] == pytest.approx(1.0)
    assert np.all(np.diff(impact) > 0)
    assert apply_calibration(np.array([1.0]), calib)[0] == 1.0  # beyond the reference: capped


def test_output_is_a_canonical_training_source(market):
    out, _ = _label(
        market, [{"text": "x", "ticker": "AAA", "date": "2024-01-03"}] * 3, sentiment_score="signed"
    )
    assert {"text", "sentiment", "sentiment_score", "impact", "topics", "entities"} <= set(out.columns)
    assert out["entities"].iloc[0][0]["ticker"] == "AAA"
    assert out["sentiment_score"].between(-1, 1).all() and out["impact"].between(0, 1).all()


def test_single_ticker_equal_weighted_is_refused(tmp_path):
    pd.DataFrame({"ticker": ["A"] * 3, "date": SESSIONS[:3], "adj_close": [1.0, 2.0, 3.0]}).to_parquet(
        tmp_path / "p.parquet"
    )
    pd.DataFrame([{"text": "x", "ticker": "A", "date": "2024-01-03"}]).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(ConfigError, match="benchmark=none"):
        run(
            ImpactLabelsConfig(
                news=str(tmp_path / "n.parquet"),
                prices=str(tmp_path / "p.parquet"),
                output=str(tmp_path / "o.parquet"),
            )
        )


@pytest.mark.skipif(not (SHARED_DATA / "stocknet").is_dir(), reason="shared StockNet data not present")
def test_reproduces_stocknet_movement_and_excess(tmp_path):
    config = ImpactLabelsConfig(
        news=str(SHARED_DATA / "stocknet/validation.parquet"), prices=str(SHARED_DATA / "stocknet/prices.parquet"),
        output=str(tmp_path / "sn.parquet"), window=[0, 0], date_only_session="next",
    )  # fmt: skip
    run(config)
    out = pd.read_parquet(tmp_path / "sn.parquet")
    ref = pd.read_parquet(SHARED_DATA / "stocknet/validation.parquet").iloc[out["row"]].reset_index(drop=True)
    assert len(out) > 0.99 * 2211
    assert (out["event_session"] == ref["target_date"]).all()
    assert np.abs(out["return"] - ref["movement_pct"]).max() < 1e-5
    assert np.abs(out["abnormal_return"] - ref["excess_movement_pct"]).max() < 1e-5


@pytest.mark.skipif(not (SHARED_DATA / "fnspid_sample/raw").is_dir(), reason="shared FNSPID data not present")
def test_reproduces_fnspid_ret_1d(tmp_path):
    raw = SHARED_DATA / "fnspid_sample/raw"
    config = ImpactLabelsConfig(
        news=str(raw / "headlines_aa.csv"), prices={"AA": str(raw / "prices_aa.csv")}, output=str(tmp_path / "aa.parquet"),
        columns=NewsColumns(text="Headline", ticker=None, timestamp="Date", id="URL"), default_ticker="AA",
        window=[1, 1], benchmark="none",
    )  # fmt: skip
    config.price_columns.date, config.price_columns.price = "Date", "Adj Close"
    run(config)
    out = pd.read_parquet(tmp_path / "aa.parquet").drop_duplicates("id")
    ref = pd.concat(
        [pd.read_parquet(SHARED_DATA / f"fnspid_sample/{s}.parquet") for s in ("train", "validation", "test")]
    )
    merged = ref[ref["ticker"] == "AA"].merge(out, left_on="url", right_on="id")
    assert len(merged) == (ref["ticker"] == "AA").sum()
    assert np.abs(merged["return"] - merged["ret_1d"]).max() < 1e-9
    assert (merged["event_session"] == merged["event_trading_date"]).all()
