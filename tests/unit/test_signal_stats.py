"""Pooled regressions, Newey-West and the event study on synthetic prices with a planted effect: a signal
that moves the next session's abnormal return by a known amount in a known fraction of names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from inference.signal_stats import event_study, newey_west_t, pooled_regression

BETA = 0.004  # next-session abnormal return per standard deviation of the signal, in affected names
SHARE = 0.5  # fraction of names the signal moves
VOL = 0.02  # daily abnormal return volatility


def panel(days: int, names: int = 80, seed: int = 0, news_rate: float = 0.3, beta: float = BETA):
    """(signals, returns): news on a random ``news_rate`` of (ticker, session)s with a N(0, 1) signal;
    in the first ``SHARE`` of names the next session's abnormal return moves by ``beta * signal``."""
    rng = np.random.default_rng(seed)
    sessions = pd.bdate_range("2014-01-01", periods=days).date
    ar = rng.normal(0.0, VOL, size=(names, days))
    news = rng.random((names, days)) < news_rate
    signal = np.where(news, rng.normal(size=(names, days)), np.nan)
    affected = np.arange(names) < int(SHARE * names)
    planted = np.nan_to_num(signal[:, :-1]) * beta * affected[:, None]
    ar[:, 1:] += planted
    tickers = np.array([f"T{i:03d}" for i in range(names)])
    returns = []
    for i, t in enumerate(tickers):
        same = ar[i].copy()
        same[0] = np.nan  # the first session has no previous close
        nxt = np.r_[ar[i, 1:], np.nan]
        five = pd.Series(ar[i]).rolling(5).sum().shift(-5).to_numpy()
        returns.append(
            pd.DataFrame({"ticker": t, "session": sessions, "ret_same": same, "ret_1": nxt, "ret_5": five})
        )
    returns = pd.concat(returns, ignore_index=True)
    rows, cols = np.nonzero(news)
    signals = pd.DataFrame({"ticker": tickers[rows], "session": sessions[cols], "signal": signal[rows, cols]})
    return signals, returns


def merged(signals, returns):
    return signals.merge(returns, on=["ticker", "session"], how="inner")


def test_the_pooled_coefficient_recovers_the_planted_effect_within_its_standard_error():
    """Over 20 independent histories the estimate lands within one standard error of the planted effect
    about 68 % of the time and within two about 95 %: the error is the right size, not only the centre."""
    expected = BETA * SHARE  # per standard deviation of the signal, pooled over all names
    z = []
    for seed in range(20):
        signals, returns = panel(250, seed=100 + seed)
        fit = pooled_regression(merged(signals, returns), "signal", "ret_1", 1, bootstrap=0)
        z.append((fit["coef"] - expected) / fit["se"])
    z = np.abs(np.asarray(z))
    assert 0.5 <= (z < 1).mean() <= 0.9 and (z < 2).mean() >= 0.85, z.round(2)


def test_one_history_with_its_bootstrap():
    signals, returns = panel(500)
    fit = pooled_regression(merged(signals, returns), "signal", "ret_1", 1, bootstrap=200)
    expected = BETA * SHARE
    assert abs(fit["coef"] - expected) < 2 * fit["se"], fit
    assert fit["t"] > 5 and fit["n_days"] == 499  # the last session has no next one
    assert fit["bootstrap"]["ci95"][0] < expected < fit["bootstrap"]["ci95"][1]
    assert fit["bootstrap"]["se"] == pytest.approx(fit["se"], rel=0.25)
    # the effect sits in half of the names: treating names as a sample as well widens the error
    assert fit["se_two_way"] > fit["se"] and fit["t_two_way"] > 2


def test_t_grows_as_the_square_root_of_the_days():
    """Mean t over 8 histories of 150 and of 600 sessions: four times the days, twice the t."""
    ts = []
    for days in (150, 600):
        fits = [
            pooled_regression(merged(*panel(days, seed=s)), "signal", "ret_1", 1, bootstrap=0)
            for s in range(8)
        ]
        ts.append(np.mean([f["t"] for f in fits]))
    assert ts[1] / ts[0] == pytest.approx(math.sqrt(600 / 150), rel=0.15), ts


def test_a_signal_of_the_same_sessions_return_does_not_predict_the_next():
    signals, returns = panel(500, seed=5, beta=0.0)
    data = merged(signals, returns)
    data["same_return"] = data["ret_same"]
    fit = pooled_regression(data, "same_return", "ret_1", 1, bootstrap=0)
    assert abs(fit["t"]) < 3 and abs(fit["coef"]) < 3 * fit["se"], fit
    same = pooled_regression(data, "same_return", "ret_same", 1, bootstrap=0)
    assert same["t"] > 50  # it "predicts" its own session perfectly: why that column is not tradeable


def test_overlapping_horizons_widen_the_standard_error():
    signals, returns = panel(500, seed=7)
    data = merged(signals, returns)
    fit5 = pooled_regression(data, "signal", "ret_5", 5, bootstrap=0)
    assert fit5["nw_lags"] == 4
    assert abs(fit5["coef"] - BETA * SHARE) < 2.5 * fit5["se"]  # the planted next-session move is in ret_5


def test_newey_west_matches_the_plain_standard_error_without_autocorrelation():
    x = np.random.default_rng(0).normal(0.001, 0.01, size=4000)
    nw = newey_west_t(x, lags=0)
    assert nw["se"] == pytest.approx(x.std() / math.sqrt(len(x)), rel=1e-9)
    # an AR(1) series: NW widens the error the plain formula understates
    y = np.zeros(4000)
    for i in range(1, 4000):
        y[i] = 0.6 * y[i - 1] + x[i]
    assert newey_west_t(y, lags=10)["se"] > 1.5 * newey_west_t(y, lags=0)["se"]


def test_the_event_study_jumps_at_plus_one_and_not_before():
    signals, returns = panel(500, seed=11)
    study = event_study(signals, returns, "signal")
    rel = study["relative_sessions"]
    assert rel[0] == -5 and rel[-1] == 10
    top, bottom = study["groups"]["top third"], study["groups"]["bottom third"]
    increments = np.diff(np.r_[0.0, top["car"]])
    n_top = top["n_events"]
    step_se = VOL / math.sqrt(n_top)
    at = {k: increments[rel.index(k)] for k in rel}
    assert at[1] > 6 * step_se  # the planted move: +BETA * SHARE * E[signal | top third] ~ 0.0022
    assert all(abs(at[k]) < 3.5 * step_se for k in rel if k <= 0)  # nothing before the news is known
    assert all(abs(at[k]) < 3.5 * step_se for k in rel if k >= 2)  # and nothing after the next session
    assert np.diff(np.r_[0.0, bottom["car"]])[rel.index(1)] < -6 * step_se
    assert study["spread"]["+1"] > 0 and study["spread"]["+5"] > 0
    lower, upper = np.asarray(top["lower"]), np.asarray(top["upper"])
    assert (lower <= np.asarray(top["car"])).all() and (np.asarray(top["car"]) <= upper).all()
    assert upper[rel.index(0)] > 0 > lower[rel.index(0)]  # the band covers zero before the step


def test_sign_groups_and_events_without_a_full_window():
    signals, returns = panel(30, names=10, seed=2)
    signals["signal"] = signals["signal"].clip(-1, 1)
    study = event_study(signals, returns, "signal", groups="sign", threshold=0.1)
    assert set(study["groups"]) <= {"negative", "neutral", "positive"}
    # 30 sessions: only events with 5 sessions before (after the first) and 10 after count
    assert study["n_events"] < len(signals)
    assert study["n_events"] == sum(g["n_events"] for g in study["groups"].values())
