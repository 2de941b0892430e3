"""Trading calendars, prices and market-relative returns: what impact labels (training/impact_labels.py),
data sources with ``impact_from_return`` (training/sources.py) and signals (inference/signals.py) share.

- :func:`load_prices` reads a long price file (or one file per ticker) into a :class:`Calendar` per ticker.
- :class:`Benchmark`: the market's daily return (an index file, or the equal-weighted mean of the tickers').
- :func:`event_session`: the first session of a ticker's calendar that could react to a timestamp (time
  zones, after the close and non-trading days -> the next session; date-only stamps by rule).
- :func:`build_calibration` / :func:`apply_calibration`: |abnormal return| -> impact in [0, 1] by its rank
  in a reference set, as a small quantile table that travels with a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from training.config import ConfigError


@dataclass
class PriceColumns:
    ticker: str = "ticker"
    date: str = "date"
    price: str = "adj_close"


def _read_table(path: str) -> pd.DataFrame:
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=True, convert_dates=False, dtype=False)
    return pd.read_csv(path, encoding="utf-8-sig")


@dataclass
class Calendar:
    """One ticker's sessions (sorted dates) and prices."""

    dates: np.ndarray  # datetime64[D]
    prices: np.ndarray

    def returns(self) -> np.ndarray:
        return self.prices[1:] / self.prices[:-1] - 1.0


def load_prices(config: Any) -> dict[str, Calendar]:
    """Calendars per ticker from ``config.prices`` / ``config.price_columns`` (impact labels and signals)."""
    cols = config.price_columns
    if isinstance(config.prices, dict):
        frames = []
        for ticker, path in config.prices.items():
            df = _read_table(str(path))
            df[cols.ticker] = ticker
            frames.append(df)
        prices = pd.concat(frames, ignore_index=True)
    else:
        prices = _read_table(str(config.prices))
    missing = [c for c in (cols.ticker, cols.date, cols.price) if c not in prices.columns]
    if missing:
        raise ConfigError(
            [f"price_columns: {missing} not in the price data (columns: {list(prices.columns)})"]
        )
    prices = prices[[cols.ticker, cols.date, cols.price]].dropna()
    prices["_d"] = pd.to_datetime(prices[cols.date]).dt.normalize().values.astype("datetime64[D]")
    calendars = {}
    for ticker, group in prices.sort_values("_d").groupby(cols.ticker, sort=False):
        group = group.drop_duplicates("_d", keep="last")
        calendars[str(ticker)] = Calendar(
            group["_d"].to_numpy().astype("datetime64[D]"), group[cols.price].to_numpy(dtype=float)
        )
    return calendars


class Benchmark:
    """Daily benchmark returns: an index series, or the equal-weighted mean of every ticker's return."""

    def __init__(self, config: Any, calendars: dict[str, Calendar]):
        # config: ImpactLabelsConfig or inference.signals.SignalsConfig (same benchmark keys)
        self.exclude_self = config.exclude_self
        self.own: dict[str, pd.Series] = {}
        self.count: pd.Series | None = None
        if config.benchmark == "none":
            self.daily = None
            self.description = "none (raw returns)"
            return
        if config.benchmark == "equal_weighted" and len(calendars) < 2:
            raise ConfigError(
                [
                    "benchmark=equal_weighted needs prices of several tickers (with one, every abnormal return is 0); "
                    "give an index file as benchmark=... or benchmark=none for raw returns"
                ]
            )
        if config.benchmark != "equal_weighted":
            df = _read_table(config.benchmark)
            dates = pd.to_datetime(df[config.price_columns.date]).dt.normalize()
            series = pd.Series(
                df[config.benchmark_price_column].to_numpy(dtype=float), index=dates
            ).sort_index()
            self.daily = series.pct_change().dropna()
            self.description = f"index {config.benchmark}"
            return
        frames = []
        for ticker, cal in calendars.items():
            s = pd.Series(cal.returns(), index=pd.to_datetime(cal.dates[1:]))
            self.own[ticker] = s
            frames.append(s.rename(ticker))
        wide = pd.concat(frames, axis=1)
        self.sum = wide.sum(axis=1, min_count=1)
        self.count = wide.count(axis=1)
        self.daily = self.sum / self.count
        self.description = f"equal-weighted mean of {len(calendars)} tickers" + (
            " (excluding the stock)" if self.exclude_self else ""
        )

    def daily_for(self, ticker: str, dates: np.ndarray) -> np.ndarray:
        """Benchmark return on each of ``dates`` (the ticker's sessions); NaN where there is none."""
        if self.daily is None:
            return np.zeros(len(dates))
        idx = pd.to_datetime(dates)
        if self.exclude_self and self.count is not None and ticker in self.own:
            own = self.own[ticker].reindex(idx).to_numpy()
            total = self.sum.reindex(idx).to_numpy()
            count = self.count.reindex(idx).to_numpy()
            return (total - np.nan_to_num(own)) / (count - ~np.isnan(own))
        return self.daily.reindex(idx).to_numpy()


def event_session(value: Any, cal: Calendar, config: Any) -> int | str:
    """Index of the event session in the ticker's calendar, or the reason there is none.

    The one session-alignment rule of the project: impact labels and ``inference.signals`` both call it
    (``config`` has ``timezone``, ``naive_timezone``, ``market_close`` and ``date_only_session``).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "missing timestamp"
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return f"bad timestamp '{value}'"
    if ts is pd.NaT:
        return f"bad timestamp '{value}'"
    # "2014-01-02" or "JAN 17, 2024" (no time of day) vs "2014-01-02 15:30" or a tz-aware timestamp.
    date_only = ":" not in value if isinstance(value, str) else ts.tzinfo is None and ts == ts.normalize()
    if date_only:
        day = np.datetime64(ts.date(), "D")
        side: Literal["left", "right"] = "left" if config.date_only_session == "same" else "right"
    else:
        if ts.tzinfo is None:
            ts = ts.tz_localize(config.naive_timezone or config.timezone)
        local = ts.tz_convert(config.timezone)
        day = np.datetime64(local.date(), "D")
        close_h, close_m = (int(x) for x in config.market_close.split(":"))
        after_close = (local.hour, local.minute) >= (close_h, close_m)
        side = "right" if after_close else "left"
    idx = int(np.searchsorted(cal.dates, day, side=side))
    if idx >= len(cal.dates):
        return f"no prices on or after {day} (prices end {cal.dates[-1]})"
    return idx


def build_calibration(abs_ar: np.ndarray, quantiles: int) -> dict[str, Any]:
    levels = np.linspace(0.0, 1.0, quantiles)
    return {
        "levels": levels.tolist(),
        "abs_abnormal_return": np.quantile(abs_ar, levels).tolist(),
        "n": int(len(abs_ar)),
    }


def apply_calibration(abs_ar: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """Impact = the reference rank (empirical CDF) of |abnormal return|, interpolated between quantiles."""
    xs = np.asarray(calibration["abs_abnormal_return"])
    ys = np.asarray(calibration["levels"])
    # Ties in the table (many zero returns) would make interp pick the lowest level; average them instead.
    uniq, inverse = np.unique(xs, return_inverse=True)
    mean_levels = np.bincount(inverse, weights=ys) / np.bincount(inverse)
    impact = np.interp(abs_ar, uniq, mean_levels)
    # Beyond the reference range the rank is the extreme one, whatever the ties at the ends.
    impact = np.where(abs_ar > uniq[-1], 1.0, np.where(abs_ar < uniq[0], 0.0, impact))
    return np.clip(impact, 0.0, 1.0)
