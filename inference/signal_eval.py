"""A signal evaluated against forward abnormal returns: per horizon, the daily cross-sectional rank IC with
its quantile long-short (Sharpe before and after costs, turnover), the per-ticker time-series IC for
archives of few names, and the pooled statistics (inference/signal_stats.py: the panel regression with
clustered standard errors, the long-short's Newey-West t, the event study). Pure computation on frames;
inference/signals.py builds the signals and writes the outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from inference.signal_stats import event_study, newey_west_t, pooled_regression
from training.choices import EventGroups
from training.markets import Benchmark, Calendar


@dataclass
class EvaluationOptions:
    horizons: list[int] = field(default_factory=lambda: [1, 5])
    quantiles: int = 5
    cost_bps: float = 10.0
    min_tickers: int = 5  # a session counts for the IC only with at least this many tickers
    min_sessions: int = 20  # a ticker counts for the time-series IC only with this many news sessions
    periods_per_year: int = 252
    # pooled regression (inference/signal_stats.py): moving-block bootstrap draws over dates (0: none)
    bootstrap: int = 500
    # event study groups: terciles of the pooled signal | sign (negative / neutral / positive around
    # +-event_threshold, for sentiment scores in [-1, 1])
    event_groups: EventGroups = EventGroups.terciles
    event_threshold: float = 0.1


def forward_returns(calendars: dict[str, Calendar], bench: Benchmark, horizons: list[int]) -> pd.DataFrame:
    """Per (ticker, session t): abnormal return close(t)->close(t+h) per h, and the same-session one."""
    frames = []
    for ticker, cal in calendars.items():
        daily_b = np.concatenate([[np.nan], bench.daily_for(ticker, cal.dates[1:])])
        growth_b = np.nancumsum(np.log1p(np.nan_to_num(daily_b)))  # log benchmark level
        prices = cal.prices
        frame = {"ticker": ticker, "session": pd.to_datetime(cal.dates).date}
        same = np.full(len(prices), np.nan)
        same[1:] = prices[1:] / prices[:-1] - 1.0 - np.nan_to_num(daily_b[1:])
        frame["ret_same"] = same
        for h in horizons:
            fwd = np.full(len(prices), np.nan)
            if len(prices) > h:
                stock = prices[h:] / prices[:-h] - 1.0
                market = np.exp(growth_b[h:] - growth_b[:-h]) - 1.0
                fwd[:-h] = stock - market
            frame[f"ret_{h}"] = fwd
        frames.append(pd.DataFrame(frame))
    return pd.concat(frames, ignore_index=True)


def _ic_stats(ics: pd.Series) -> dict[str, Any]:
    n = int(ics.count())
    mean = float(ics.mean()) if n else float("nan")
    std = float(ics.std(ddof=1)) if n > 1 else float("nan")
    icir = mean / std if std and not math.isnan(std) and std > 0 else float("nan")
    return {
        "mean_ic": mean,
        "ic_std": std,
        "icir": icir,
        "t_stat": icir * math.sqrt(n) if not math.isnan(icir) else float("nan"),
        "hit_rate": float((ics > 0).mean()) if n else float("nan"),
        "n_days": n,
    }


def _long_short(day: pd.DataFrame, signal: str, ret: str, q: int) -> tuple[float, set[str], set[str]]:
    ranks = day[signal].rank(method="first")
    bins = np.ceil(ranks / len(day) * q).clip(1, q)
    long, short = day[bins == q], day[bins == 1]
    return float(long[ret].mean() - short[ret].mean()), set(long["ticker"]), set(short["ticker"])


def evaluate_signal(
    data: pd.DataFrame, signal: str, ret: str, h: int, opts: EvaluationOptions
) -> dict[str, Any]:
    """Daily rank IC and quantile long-short of ``signal`` against ``ret`` (an h-session return)."""
    rows = data.dropna(subset=[signal, ret])
    ics, ls, turnovers, days = [], [], [], []
    prev: tuple[set[str], set[str]] | None = None
    for session, day in rows.groupby("session", sort=True):
        if len(day) < opts.min_tickers or day[signal].nunique() < 2:
            continue
        ics.append(day[signal].rank().corr(day[ret].rank()))
        days.append(session)
        spread, long, short = _long_short(day, signal, ret, opts.quantiles)
        ls.append(spread / h)  # per session, so horizons compare
        if prev is not None:
            change = 0.5 * (
                len(long ^ prev[0]) / max(len(long), 1) + len(short ^ prev[1]) / max(len(short), 1)
            )
            turnovers.append(change)
        else:
            turnovers.append(1.0)
        prev = (long, short)
    stats = _ic_stats(pd.Series(ics, dtype=float))
    ls_arr = np.asarray(ls, dtype=float)
    turn = np.asarray(turnovers, dtype=float)
    net = ls_arr - turn * opts.cost_bps / 1e4 / h
    annual = math.sqrt(opts.periods_per_year)

    def sharpe(x: np.ndarray) -> float:
        return float(x.mean() / x.std(ddof=1) * annual) if len(x) > 1 and x.std(ddof=1) > 0 else float("nan")

    stats.update(
        n_tickers=int(rows["ticker"].nunique()),
        long_short_mean=float(ls_arr.mean()) if len(ls_arr) else float("nan"),
        long_short_sharpe=sharpe(ls_arr),
        long_short_sharpe_net=sharpe(net),
        turnover=float(turn.mean()) if len(turn) else float("nan"),
        _daily={"session": [str(d) for d in days], "ic": ics, "long_short": ls},
    )
    return stats


def _corr_t(r: float, n: int) -> float:
    return r * math.sqrt((n - 2) / (1 - r**2)) if n > 2 and abs(r) < 1 else float("nan")


def time_series_ic(data: pd.DataFrame, signal: str, ret: str, opts: EvaluationOptions) -> dict[str, Any]:
    """Per ticker, the rank correlation over its news sessions of ``signal`` with ``ret``; then across tickers.

    For archives of few names (a cross-section of under ``min_tickers`` has no daily IC): each ticker with
    at least ``min_sessions`` sessions gives one IC with its own t (r * sqrt((n - 2) / (1 - r^2)));
    ``t_stat`` is across tickers, or the single ticker's own.
    """
    rows = data.dropna(subset=[signal, ret])
    per: dict[str, dict[str, Any]] = {}
    for ticker, g in rows.groupby("ticker", sort=True):
        if len(g) < opts.min_sessions or g[signal].nunique() < 2:
            continue
        r = float(g[signal].rank().corr(g[ret].rank()))
        per[str(ticker)] = {"ic": r, "sessions": len(g), "t_stat": _corr_t(r, len(g))}
    ics = np.asarray([v["ic"] for v in per.values()], dtype=float)
    mean = float(ics.mean()) if len(ics) else float("nan")
    if len(ics) > 1 and ics.std(ddof=1) > 0:
        t = mean / ics.std(ddof=1) * math.sqrt(len(ics))
    elif len(ics) == 1:
        t = next(iter(per.values()))["t_stat"]
    else:
        t = float("nan")
    n_obs = sum(v["sessions"] for v in per.values())
    return {"mean_ic": mean, "t_stat": float(t), "n_tickers": len(ics), "n_obs": n_obs, "per_ticker": per}


def evaluate(
    signals: pd.DataFrame, returns: pd.DataFrame, columns: list[str], opts: EvaluationOptions, seed: int = 0
) -> dict:
    """Daily IC and long-short (per horizon and the same session), the per-ticker time-series IC, the
    pooled regression with the long-short's Newey-West t (``pooled``), and the event study."""
    data = signals.merge(returns, on=["ticker", "session"], how="inner")
    result: dict[str, Any] = {"horizons": {}, "same_session": {}, "time_series": {}, "pooled": {}}
    for h in opts.horizons:
        ret = f"ret_{h}"
        result["horizons"][str(h)] = {c: evaluate_signal(data, c, ret, h, opts) for c in columns}
        result["time_series"][str(h)] = {c: time_series_ic(data, c, ret, opts) for c in columns}
        pooled = {}
        for c in columns:
            fit = pooled_regression(data, c, ret, h, bootstrap=opts.bootstrap, seed=seed)
            # the daily top-minus-bottom quantile spread (per session), its Newey-West t
            daily = result["horizons"][str(h)][c]["_daily"]["long_short"]
            lags = max(h - 1, int(4 * (len(daily) / 100) ** (2 / 9)))
            fit["long_short"] = newey_west_t(np.asarray(daily, dtype=float), lags=lags)
            pooled[c] = fit
        result["pooled"][str(h)] = pooled
    result["same_session"] = {c: evaluate_signal(data, c, "ret_same", 1, opts) for c in columns}
    result["event_study"] = {
        c: event_study(signals, returns, c, groups=opts.event_groups, threshold=opts.event_threshold)
        for c in columns
    }
    return result
