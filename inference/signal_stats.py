"""Statistics that pool a signal's information across names and days: the panel regression of forward
abnormal returns on the standardised signal (date-clustered / Driscoll-Kraay, ticker-clustered and two-way
standard errors, a moving-block bootstrap over dates), the Newey-West t of a daily long-short spread, and
the event study (mean cumulative abnormal return around each (ticker, session) with news, by signal group).

The daily rank IC (inference/signals.py) spends one number per day; on a short history or a narrow
universe its standard error is as large as any effect. These use every (ticker, session) observation and
still account for the two ways they are not independent: names move together on a day (clustering by
date) and an h-session return overlaps the next day's (Newey-West lags of h - 1 over dates).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

EVENT_WINDOW = (-5, 10)  # relative sessions of the event study


def _nw_weights(lags: int) -> np.ndarray:
    return 1.0 - np.arange(1, lags + 1) / (lags + 1.0)  # Bartlett


def _meat_by_group(scores: np.ndarray, groups: np.ndarray, lags: int = 0) -> np.ndarray:
    """Sum over groups of the outer product of each group's summed scores; with ``lags`` the groups are
    ordered dates and neighbouring dates' products enter with Bartlett weights (Driscoll-Kraay)."""
    codes, inverse = np.unique(groups, return_inverse=True)
    sums = np.zeros((len(codes), scores.shape[1]))
    np.add.at(sums, inverse, scores)
    meat = sums.T @ sums
    for lag, w in zip(range(1, lags + 1), _nw_weights(lags)):
        if lag >= len(sums):
            break
        cross = sums[lag:].T @ sums[:-lag]
        meat += w * (cross + cross.T)
    return meat


def _ols(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.column_stack([np.ones_like(x), x])
    bread = np.linalg.pinv(X.T @ X)
    beta = bread @ (X.T @ y)
    return beta, X * (y - X @ beta)[:, None], bread


def pooled_regression(
    data: pd.DataFrame,
    signal: str,
    ret: str,
    h: int,
    *,
    bootstrap: int = 500,
    seed: int = 0,
    min_two_way: int = 20,
) -> dict[str, Any]:
    """OLS of ``ret`` on the signal standardised over the pooled sample: ``coef`` is the return per
    standard deviation of the signal.

    ``se`` (and ``t``) is clustered by date with Newey-West lags of ``h - 1`` over dates (Driscoll-Kraay:
    names move together on a day, and the h-session returns of neighbouring dates overlap): the question
    "is the average effect over these names non-zero", whose t grows as the square root of the days.
    ``se_ticker`` clusters by name; ``se_two_way`` / ``t_two_way`` (Cameron, Gelbach and Miller: date +
    ticker - heteroskedasticity-robust, where there are at least ``min_two_way`` of both) also treats the
    names as a sample of names, so an effect confined to a few of them is wider (it cannot shrink below
    the spread of the names' own effects, however many days). The bootstrap resamples blocks of ``h``
    consecutive dates ``bootstrap`` times (its ``se`` and 95 % interval, comparable with ``se``).
    """
    rows = data.dropna(subset=[signal, ret])
    out: dict[str, Any] = {"n_obs": len(rows), "n_days": int(rows["session"].nunique()) if len(rows) else 0}
    out["n_tickers"] = int(rows["ticker"].nunique()) if len(rows) else 0
    x_raw = rows[signal].to_numpy(dtype=float)
    if len(rows) < 3 or out["n_days"] < 2 or not np.std(x_raw) > 0:
        return {**out, "coef": math.nan, "se": math.nan, "t": math.nan, "se_kind": "too few observations"}
    rows = rows.sort_values("session")
    x_raw = rows[signal].to_numpy(dtype=float)
    x = (x_raw - x_raw.mean()) / x_raw.std()
    y = rows[ret].to_numpy(dtype=float)
    dates = rows["session"].to_numpy()
    tickers = rows["ticker"].to_numpy()
    beta, scores, bread = _ols(y, x)
    n, k = len(y), 2
    n_days, n_tickers = out["n_days"], out["n_tickers"]

    def cov(meat: np.ndarray, groups: int) -> np.ndarray:
        correction = groups / max(groups - 1, 1) * (n - 1) / (n - k)
        return correction * bread @ meat @ bread

    lags = max(h - 1, 0)
    v_date = cov(_meat_by_group(scores, dates, lags), n_days)
    v_ticker = cov(_meat_by_group(scores, tickers), n_tickers)
    se_date, se_ticker = math.sqrt(max(v_date[1, 1], 0.0)), math.sqrt(max(v_ticker[1, 1], 0.0))
    out.update(coef=float(beta[1]), se=se_date, se_kind="date (Newey-West lags)", nw_lags=lags)
    out.update(se_date=se_date, se_ticker=se_ticker)
    if n_days >= min_two_way and n_tickers >= min_two_way:
        v_two = v_date + v_ticker - cov(scores.T @ scores, n)
        out["se_two_way"] = math.sqrt(v_two[1, 1]) if v_two[1, 1] > 0 else max(se_date, se_ticker)
        out["t_two_way"] = out["coef"] / out["se_two_way"] if out["se_two_way"] > 0 else math.nan
    out["t"] = out["coef"] / se_date if se_date > 0 else math.nan
    if bootstrap:
        out["bootstrap"] = _block_bootstrap(x, y, dates, h, bootstrap, seed)
    return out


def _block_bootstrap(
    x: np.ndarray, y: np.ndarray, dates: np.ndarray, block: int, reps: int, seed: int
) -> dict[str, Any]:
    """Moving blocks of ``block`` consecutive dates drawn with replacement until the sample has as many
    dates as the original; the slope refitted on each draw. Each date enters through its sums (n, x, y,
    xy, xx), so a draw is a weighted sum over dates: all draws at once, as one matrix product."""
    codes, inverse = np.unique(dates, return_inverse=True)
    n_dates = len(codes)
    stats = np.zeros((n_dates, 5))
    for column, values in enumerate((np.ones_like(x), x, y, x * y, x * x)):
        np.add.at(stats[:, column], inverse, values)
    rng = np.random.default_rng(seed)
    block = max(1, min(block, n_dates))
    n_blocks = math.ceil(n_dates / block)
    first = rng.integers(0, n_dates - block + 1, size=(reps, n_blocks))
    picked = (first[:, :, None] + np.arange(block)).reshape(reps, -1)[:, :n_dates]
    weights = np.zeros((reps, n_dates))
    np.add.at(weights, (np.arange(reps)[:, None], picked), 1.0)
    n, sx, sy, sxy, sxx = (weights @ stats).T
    var = sxx / n - (sx / n) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        coefs = np.where(var > 0, (sxy / n - sx * sy / n**2) / var, np.nan)
    coefs = coefs[~np.isnan(coefs)]
    return {
        "se": float(coefs.std(ddof=1)) if len(coefs) > 1 else math.nan,
        "ci95": [float(np.percentile(coefs, 2.5)), float(np.percentile(coefs, 97.5))] if len(coefs) else [],
        "reps": int(len(coefs)),
        "block_dates": block,
    }


def newey_west_t(series: np.ndarray, lags: int | None = None) -> dict[str, Any]:
    """Mean of a daily series with its Newey-West (Bartlett) standard error and t; ``lags`` default
    ``floor(4 (T / 100) ^ (2 / 9))``."""
    x = np.asarray(series, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 3:
        return {
            "mean": float(x.mean()) if n else math.nan,
            "t": math.nan,
            "se": math.nan,
            "lags": 0,
            "n_days": n,
        }
    lags = int(4 * (n / 100) ** (2 / 9)) if lags is None else lags
    e = x - x.mean()
    var = e @ e / n
    for lag, w in zip(range(1, lags + 1), _nw_weights(lags)):
        if lag < n:
            var += 2 * w * (e[lag:] @ e[:-lag]) / n
    se = math.sqrt(max(var, 0.0) / n)
    return {
        "mean": float(x.mean()),
        "se": se,
        "t": float(x.mean() / se) if se > 0 else math.nan,
        "lags": lags,
        "n_days": n,
    }


def signal_groups(values: pd.Series, how: str = "terciles", threshold: float = 0.1) -> pd.Series:
    """``terciles``: bottom / middle / top third of the pooled signal; ``sign``: negative / neutral /
    positive around +-``threshold`` (for sentiment scores in [-1, 1])."""
    if how == "sign":
        return pd.Series(
            np.where(values > threshold, "positive", np.where(values < -threshold, "negative", "neutral")),
            index=values.index,
        )
    ranks = values.rank(method="first") / len(values)
    return pd.Series(
        np.where(ranks > 2 / 3, "top third", np.where(ranks <= 1 / 3, "bottom third", "middle third")),
        index=values.index,
    )


def _event_windows(
    events: pd.DataFrame, returns: pd.DataFrame, window: tuple[int, int]
) -> tuple[np.ndarray, list[int]]:
    """Each event's abnormal returns over ``window`` (rows: events kept; columns: relative sessions) and
    the positions of the events kept (those whose whole window has returns)."""
    lo, hi = window
    position = {}
    for ticker, g in returns.sort_values("session").groupby("ticker", sort=False):
        position[ticker] = (dict(zip(g["session"], range(len(g)))), g["ret_same"].to_numpy(dtype=float))
    ars, keep = [], []
    for i, (ticker, session) in enumerate(zip(events["ticker"], events["session"])):
        found = position.get(ticker)
        if found is None or session not in found[0]:
            continue
        p = found[0][session]
        if p + lo < 1 or p + hi >= len(found[1]):  # the first session has no return
            continue
        window_ar = found[1][p + lo : p + hi + 1]
        if np.isnan(window_ar).any():
            continue
        ars.append(window_ar)
        keep.append(i)
    return (np.vstack(ars) if ars else np.zeros((0, hi - lo + 1))), keep


def event_study(
    signals: pd.DataFrame,
    returns: pd.DataFrame,
    signal: str,
    *,
    window: tuple[int, int] = EVENT_WINDOW,
    groups: str = "terciles",
    threshold: float = 0.1,
) -> dict[str, Any]:
    """Mean cumulative abnormal return from ``window[0]`` to ``window[1]`` sessions around every
    (ticker, session) with news, per signal group, with 95 % bands clustered by event date.

    ``returns`` holds every session of every ticker with ``ret_same`` (the abnormal return of that
    session, close(t-1) -> close(t)); CAR(k) sums those of sessions ``window[0]`` .. k relative to the
    event, so a signal that predicts the next session's return shows as a step between 0 and +1.
    ``spread`` is the top group's CAR minus the bottom's at +1 and +5 (from ``window[0]``: it includes
    the move the news reported); ``spread_after_news`` the same from the news session's close. Events
    whose window runs past the ticker's prices are left out.
    """
    lo, hi = window
    events = signals.dropna(subset=[signal])[["ticker", "session", signal]]
    ars, keep = _event_windows(events, returns, window)
    result: dict[str, Any] = {"relative_sessions": list(range(lo, hi + 1)), "grouping": groups, "groups": {}}
    if not keep:
        result["n_events"] = 0
        return result
    kept = events.iloc[keep].reset_index(drop=True)
    car = np.cumsum(ars, axis=1)
    labels = signal_groups(kept[signal], groups, threshold).to_numpy()
    dates = kept["session"].to_numpy()
    result["n_events"] = len(kept)
    for name in sorted(set(labels)):
        mask = labels == name
        mean = car[mask].mean(axis=0)
        se = _clustered_se_of_mean(car[mask], dates[mask])
        result["groups"][str(name)] = {
            "n_events": int(mask.sum()),
            "car": mean.tolist(),
            "lower": (mean - 1.96 * se).tolist(),
            "upper": (mean + 1.96 * se).tolist(),
        }
    names = list(result["groups"])
    top, bottom = ("positive", "negative") if groups == "sign" else ("top third", "bottom third")
    if top in names and bottom in names:
        diff = np.asarray(result["groups"][top]["car"]) - np.asarray(result["groups"][bottom]["car"])
        result["spread"] = {f"{k:+d}": float(diff[k - lo]) for k in (1, 5) if lo <= k <= hi}
        # after the news session only: what a position taken at its close would have earned
        if lo <= 0:
            result["spread_after_news"] = {
                f"{k:+d}": float(diff[k - lo] - diff[-lo]) for k in (1, 5) if k <= hi
            }
        result["spread_groups"] = [top, bottom]
    return result


def _clustered_se_of_mean(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Per column, the standard error of the mean with observations correlated within a cluster."""
    n = len(values)
    if n < 2:
        return np.full(values.shape[1], np.nan)
    e = values - values.mean(axis=0)
    codes, inverse = np.unique(clusters, return_inverse=True)
    sums = np.zeros((len(codes), values.shape[1]))
    np.add.at(sums, inverse, e)
    g = len(codes)
    correction = g / (g - 1) if g > 1 else 1.0
    return np.sqrt(correction * (sums**2).sum(axis=0)) / n
