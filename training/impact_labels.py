"""Market-impact training labels from a news archive and daily prices.

``python -m training.impact_labels news=FILE prices=FILE output=FILE [overrides]``

For every (article, ticker) row:

1. **Event session**: the first session of the ticker's price calendar that could react. A timestamp
   with a time is converted to the exchange time zone; an article at or after the close, or on a day
   without a session (weekend, holiday), moves to the next session. A date-only timestamp reacts on the
   same day's session (``date_only_session=same``) or, as StockNet labels it, on the next one (``next``).
2. **Abnormal return** over ``window: [a, b]`` sessions relative to the event session ``e``: the return
   from the close of session ``e+a-1`` to the close of ``e+b`` (``[0, 0]`` = the event session's
   close-to-close move), minus the benchmark's return over the same sessions: an index file if given,
   else the equal-weighted mean of every ticker's daily return (optionally without the stock itself);
   with ``beta_window`` the benchmark return is scaled by a market-model beta estimated on that
   pre-event window.
3. **Impact** in [0, 1]: the rank of |abnormal return| within a reference set (this data, or a saved
   calibration applied to new data), saved as a small quantile table. ``sentiment_score=signed`` also
   writes sign(abnormal return) x impact as a sentiment-score target.

Rows that cannot be labelled (unknown ticker, bad timestamp, no prices in the window, no text) go to the
errors file with the reason; labelled + errors = rows read. The output parquet is in the canonical
training schema (text, sentiment, sentiment_score, impact, topics, entities) plus the computed columns,
so it is usable directly as a data source (``columns: {text: text, impact: impact, entities: entities}``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from training import artifacts
from training.choices import DateOnlySession, ScoreSign
from training.config import ConfigError, entry_point, exit_on_config_error, load_validated, register_schema
from training.markets import (  # noqa: F401  (Calendar, PriceColumns ... are also this module's API)
    Benchmark,
    Calendar,
    PriceColumns,
    _read_table,
    apply_calibration,
    build_calibration,
    event_session,
    load_prices,
)

log = logging.getLogger("newsimpact.impact_labels")


@dataclass
class NewsColumns:
    text: str = "text"
    ticker: str | None = "ticker"  # a symbol or a list of symbols per row; null: use default_ticker
    timestamp: str = "date"
    id: str | None = None


@dataclass
class ImpactLabelsConfig:
    news: str = "???"
    prices: Any = "???"  # a long file (ticker, date, price) or a map {TICKER: single-ticker file}
    output: str = "???"
    benchmark: str = "equal_weighted"  # equal_weighted (all tickers) | none (raw returns) | an index file
    columns: NewsColumns = field(default_factory=NewsColumns)
    price_columns: PriceColumns = field(default_factory=PriceColumns)
    benchmark_price_column: str = "close"
    default_ticker: str | None = None
    timezone: str = "America/New_York"  # exchange time zone
    naive_timezone: str | None = None  # zone of timestamps without one; null: the exchange zone
    market_close: str = "16:00"
    date_only_session: DateOnlySession = DateOnlySession.same
    # sessions relative to the event session: the return from close(e+a-1) to close(e+b)
    window: list[int] = field(default_factory=lambda: [0, 1])
    beta_window: list[int] | None = None  # e.g. [-250, -20] sessions before the event
    exclude_self: bool = False  # equal-weighted benchmark without the stock itself
    calibration: str | None = None  # apply a saved calibration instead of building one from this data
    quantiles: int = 1001
    sentiment_score: ScoreSign | None = None  # signed: sign(abnormal return) * impact
    errors: str | None = None  # default: <output stem>.errors.jsonl
    calibration_output: str | None = None  # default: <output stem>.calibration.json


register_schema("impact_labels_schema", ImpactLabelsConfig)


def validate(config: ImpactLabelsConfig) -> None:
    problems = []
    if not Path(config.news).is_file():
        problems.append(f"news='{config.news}' is not a file")
    price_files = config.prices.values() if isinstance(config.prices, dict) else [config.prices]
    for path in price_files:
        if not Path(str(path)).is_file():
            problems.append(f"prices: '{path}' is not a file")
    if config.benchmark not in ("equal_weighted", "none") and not Path(config.benchmark).is_file():
        problems.append(f"benchmark='{config.benchmark}' must be equal_weighted, none or an index price file")
    if config.calibration and not Path(config.calibration).is_file():
        problems.append(f"calibration='{config.calibration}' is not a file")
    if len(config.window) != 2 or config.window[0] > config.window[1]:
        problems.append(
            f"window={config.window} must be [a, b] with a <= b (sessions from the event session)"
        )
    if config.beta_window is not None and (
        len(config.beta_window) != 2 or config.beta_window[1] >= min(config.window[0], 0)
    ):
        problems.append(f"beta_window={config.beta_window} must be [a, b] sessions before the event window")
    if config.columns.ticker is None and not config.default_ticker:
        problems.append("columns.ticker is null: set default_ticker (the symbol every row is about)")
    try:
        pd.Timestamp("2020-01-01").tz_localize(config.timezone)
    except Exception:  # noqa: BLE001 - any zone error means the same fix
        problems.append(f"timezone='{config.timezone}' is not a known time zone (e.g. America/New_York)")
    if problems:
        raise ConfigError(problems)


def label_row(
    ticker: str, session: int, cal: Calendar, bench: Benchmark, config: ImpactLabelsConfig
) -> dict[str, Any] | str:
    a, b = config.window
    start, end = session + a - 1, session + b
    if start < 0 or end >= len(cal.dates):
        return f"no prices in the window {config.window} around session {cal.dates[session]}"
    ret = cal.prices[end] / cal.prices[start] - 1.0
    window_dates = cal.dates[start + 1 : end + 1]
    bench_daily = bench.daily_for(ticker, window_dates)
    if np.isnan(bench_daily).any():
        return f"no benchmark return on {window_dates[np.isnan(bench_daily)][0]}"
    bench_ret = float(np.prod(1.0 + bench_daily) - 1.0)
    beta = 1.0
    if config.beta_window is not None:
        lo, hi = session + config.beta_window[0], session + config.beta_window[1]
        if lo < 1:
            return f"not enough price history for beta_window {config.beta_window}"
        stock = cal.prices[lo : hi + 1] / cal.prices[lo - 1 : hi] - 1.0
        market = bench.daily_for(ticker, cal.dates[lo : hi + 1])
        ok = ~np.isnan(market)
        if ok.sum() < 10 or np.var(market[ok]) == 0:
            return f"fewer than 10 benchmark returns in beta_window {config.beta_window}"
        beta = float(np.cov(stock[ok], market[ok])[0, 1] / np.var(market[ok], ddof=1))
    return {
        "ticker": ticker,
        "event_session": str(cal.dates[session]),
        "return": float(ret),
        "benchmark_return": bench_ret,
        "beta": beta,
        "abnormal_return": float(ret - beta * bench_ret),
    }


def _row_error(number: int, ticker: Any, reason: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "row": number,
        "ticker": None if ticker is None else str(ticker),
        "reason": reason,
        "record": {k: str(v)[:300] for k, v in record.items()},
    }


def _label_rows(
    news: pd.DataFrame, calendars: dict[str, Calendar], bench: Benchmark, config: ImpactLabelsConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One labelled row per (article, ticker), and one error per row that cannot be labelled (its reason)."""
    cols = config.columns
    rows, errors = [], []
    for number, record in enumerate(news.to_dict("records")):
        raw = record[cols.ticker] if cols.ticker else config.default_ticker
        tickers = list(raw) if isinstance(raw, list | np.ndarray) else [raw]
        text = record.get(cols.text)
        for ticker in tickers:
            result: dict[str, Any] | str
            if not isinstance(text, str) or not text.strip():
                result = "missing or blank text"
            elif ticker is None or (isinstance(ticker, float) and math.isnan(ticker)):
                result = "missing ticker"
            elif str(ticker) not in calendars:
                result = f"unknown ticker '{ticker}' (not in the price data)"
            else:
                cal = calendars[str(ticker)]
                session = event_session(record[cols.timestamp], cal, config)
                result = (
                    session
                    if isinstance(session, str)
                    else label_row(str(ticker), session, cal, bench, config)
                )
            if isinstance(result, str):
                errors.append(_row_error(number, ticker, result, record))
                continue
            result.update(text=text, timestamp=str(record[cols.timestamp]), row=number)
            if cols.id:
                result["id"] = record[cols.id]
            rows.append(result)
    return rows, errors


def _with_labels(out: pd.DataFrame, config: ImpactLabelsConfig, bench: Benchmark) -> dict[str, Any]:
    """Add impact (and, with ``sentiment_score=signed``, signed scores) to ``out`` in place; returns the
    calibration used (the given file's, else one built from these rows)."""
    abs_ar = out["abnormal_return"].abs().to_numpy() if len(out) else np.array([])
    if config.calibration:
        calibration = json.loads(Path(config.calibration).read_text())
    else:
        if not len(abs_ar):
            raise ConfigError(
                ["no row could be labelled, so no calibration can be built; see the errors file"]
            )
        calibration = build_calibration(abs_ar, config.quantiles)
        calibration.update(window=config.window, benchmark=bench.description, beta_window=config.beta_window)
    if len(out):
        signed_scores = config.sentiment_score == "signed"
        out["impact"] = apply_calibration(abs_ar, calibration)
        signed = np.sign(out["abnormal_return"]) * out["impact"]
        out["sentiment_score"] = signed if signed_scores else np.nan
        out["sentiment"] = None
        out["topics"] = None
        out["entities"] = [
            [{"ticker": t, "sentiment_score": float(s) if signed_scores else None, "aliases": []}]
            for t, s in zip(out["ticker"], signed)
        ]
    return dict(calibration)


def run(config: ImpactLabelsConfig) -> dict[str, Any]:
    news = _read_table(config.news)
    cols = config.columns
    needed = [c for c in (cols.text, cols.timestamp, cols.ticker, cols.id) if c]
    missing = [c for c in needed if c not in news.columns]
    if missing:
        raise ConfigError([f"columns: {missing} not in {config.news} (columns: {list(news.columns)})"])
    calendars = load_prices(config)
    bench = Benchmark(config, calendars)
    rows, errors = _label_rows(news, calendars, bench, config)
    out = pd.DataFrame(rows)
    calibration = _with_labels(out, config, bench)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_file(output) as tmp:
        out.to_parquet(tmp, index=False)
    errors_path = Path(config.errors or output.with_suffix(".errors.jsonl"))
    artifacts.write_text(errors_path, "".join(json.dumps(e, default=str) + "\n" for e in errors))
    calib_path = Path(config.calibration_output or output.with_suffix(".calibration.json"))
    if not config.calibration:
        artifacts.write_text(calib_path, json.dumps(calibration))
    summary = {
        "rows_read": len(out) + len(errors),
        "labelled": len(out),
        "errors": len(errors),
        "output": str(output),
        "errors_file": str(errors_path),
        "calibration": str(config.calibration or calib_path),
        "config": asdict(config),
    }
    by_reason = (
        pd.Series([str(e["reason"]).split(" (")[0].split(" '")[0] for e in errors]).value_counts().to_dict()
        if errors
        else {}
    )
    print(
        f"newsimpact: labelled {summary['labelled']:,} of {summary['rows_read']:,} (article, ticker) rows; {summary['errors']:,} errors -> {errors_path}"
    )
    for reason, n in by_reason.items():
        print(f"  {n:>7,}  {reason}")
    print(f"  output: {output}   calibration: {summary['calibration']}")
    return summary


@entry_point("impact_labels")
def main(cfg: DictConfig) -> None:
    config, _ = load_validated(cfg, ImpactLabelsConfig, validate)
    exit_on_config_error(lambda: run(config))


if __name__ == "__main__":
    main()
