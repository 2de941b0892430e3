"""The signals report: evaluation tables as markdown, PNG plots (the event study first) and a
self-contained ``report.html`` with news cards. Computation lives in inference/signals.py and
inference/signal_stats.py; this module only draws and writes."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _bp(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e4:+.1f}"


def training_days_lines(trained: dict[str, Any] | None) -> list[str]:
    """What the evaluation did about the days the model trained or selected on."""
    if trained is None:
        return []
    if not trained["known"]:
        return ["### Training days", "", "The scores' manifest does not say which dates the model trained on "
                "(a model exported before newsimpact recorded it): evaluation days were not checked.", ""]  # fmt: skip
    ranges = ", ".join(f"{r['source']}/{r['split']} {r['first']} .. {r['last']}" for r in trained["ranges"])
    if not trained["ranges"]:
        text = "The model trained on no dated source: every evaluation day is out of sample."
    elif trained["policy"] == "exclude":
        text = (f"The model trained or selected on {ranges}. {trained['overlapping_sessions']} sessions "
                f"({trained['overlapping_rows']} signal rows) whose return or event windows touch those dates "
                "are left out of the evaluation (training_days=exclude).")  # fmt: skip
    else:
        text = (f"**In-sample days kept (training_days=flag):** the model trained or selected on {ranges}; "
                f"{trained['overlapping_sessions']} evaluated sessions ({trained['overlapping_rows']} rows) "
                "overlap them, so figures below mix in-sample and out-of-sample days.")  # fmt: skip
    window = (
        f" Evaluated sessions: {trained['evaluated_first']} .. {trained['evaluated_last']}."
        if trained.get("evaluated_first")
        else ""
    )
    return ["### Training days", "", text + window, ""]


def evaluation_markdown(ev: dict[str, Any]) -> str:
    head = "| signal | mean IC | IC std | ICIR | t | hit rate | days | tickers | L/S mean | Sharpe | Sharpe net | turnover |"
    rule = "|---|" + "---|" * 11
    lines = training_days_lines(ev.get("training_days"))
    sections = [(f"Horizon {h} session(s): signal at t vs abnormal return close(t) -> close(t+{h})", table)
                for h, table in ev["horizons"].items()]  # fmt: skip
    sections.append(("Same session (NOT tradeable: the return the news arrived in)", ev["same_session"]))
    for title, table in sections:
        lines += [f"### {title}", "", head, rule]
        for name, s in table.items():
            lines.append(
                f"| {name} | {_f(s['mean_ic'], 4)} | {_f(s['ic_std'])} | {_f(s['icir'])} | {_f(s['t_stat'], 2)} | "
                f"{_f(s['hit_rate'])} | {s['n_days']} | {s['n_tickers']} | {_f(s['long_short_mean'] * 1e4, 1)} bp | "
                f"{_f(s['long_short_sharpe'], 2)} | {_f(s['long_short_sharpe_net'], 2)} | {_f(s['turnover'], 2)} |"
            )
        lines.append("")
    for h, table in ev.get("pooled", {}).items():
        lines += [
            f"### Pooled regression, horizon {h}: abnormal return close(t) -> close(t+{h}) on the standardised signal",
            "",
            "coef: return per standard deviation of the signal; t clustered by date (Newey-West lags h-1); "
            "two-way t also clusters by ticker; bootstrap: moving blocks of dates. L/S: daily top-minus-bottom "
            "quantile spread per session with its Newey-West t.",
            "",
            "| signal | coef (bp/SD) | se (bp) | t | two-way t | bootstrap 95 % (bp) | obs | days | tickers | L/S (bp/session) | L/S NW t |",
            "|---|" + "---|" * 10,
        ]
        for name, s in table.items():
            boot = s.get("bootstrap") or {}
            ci = boot.get("ci95") or []
            ci_text = f"{ci[0] * 1e4:+.1f} .. {ci[1] * 1e4:+.1f}" if len(ci) == 2 else "-"
            ls = s.get("long_short") or {}
            lines.append(
                f"| {name} | {_bp(s.get('coef'))} | {_bp(s.get('se'))} | {_f(s.get('t'), 2)} | "
                f"{_f(s.get('t_two_way'), 2)} | {ci_text} | {s['n_obs']} | {s['n_days']} | {s['n_tickers']} | "
                f"{_bp(ls.get('mean'))} | {_f(ls.get('t'), 2)} |"
            )
        lines.append("")
    studies = ev.get("event_study", {})
    if studies:
        lines += [
            "### Event study: mean cumulative abnormal return around each (ticker, session) with news",
            "",
            "Spread: the top signal group's CAR minus the bottom group's, at +1 and +5 sessions "
            "(groups: terciles of the signal, or its sign).",
            "",
            "| signal | events | groups | spread at +1 (bp) | spread at +5 (bp) |",
            "|---|---|---|---|---|",
        ]
        for name, st in studies.items():
            spread = st.get("spread", {})
            groups = ", ".join(f"{g} {v['n_events']}" for g, v in st["groups"].items())
            lines.append(
                f"| {name} | {st.get('n_events', 0)} | {groups} | {_bp(spread.get('+1'))} | {_bp(spread.get('+5'))} |"
            )
        lines.append("")
    for h, table in ev.get("time_series", {}).items():
        lines += [f"### Per ticker over time, horizon {h}: rank IC over each ticker's news sessions", "",
                  "| signal | mean IC across tickers | t | tickers | sessions |", "|---|---|---|---|---|"]  # fmt: skip
        for name, s in table.items():
            lines.append(
                f"| {name} | {_f(s['mean_ic'], 4)} | {_f(s['t_stat'], 2)} | {s['n_tickers']} | {s['n_obs']} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(ev: dict[str, Any], out: Path) -> dict[str, str]:
    """PNGs: cumulative long-short (first horizon), monthly mean IC (first horizon), IC by horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(ev["horizons"]))
    files = {}
    if ev.get("event_study"):
        files["event_study"] = event_study_plot(ev["event_study"], out / "event_study.png")
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in ev["horizons"][first].items():
        d = s["_daily"]
        if d["session"]:
            ax.plot(pd.to_datetime(d["session"]), np.cumsum(d["long_short"]), label=name)
    ax.set_title(f"Cumulative quantile long-short return, h={first} (before costs)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.autofmt_xdate()
    files["cumulative_long_short"] = str(out / "cumulative_long_short.png")
    fig.savefig(files["cumulative_long_short"], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in ev["horizons"][first].items():
        d = s["_daily"]
        if d["session"]:
            monthly = pd.Series(d["ic"], index=pd.to_datetime(d["session"])).resample("MS").mean()
            ax.plot(monthly.index, monthly.to_numpy(), marker="o", label=name)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(f"Monthly mean rank IC, h={first}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.autofmt_xdate()
    files["monthly_ic"] = str(out / "monthly_ic.png")
    fig.savefig(files["monthly_ic"], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(ev["horizons"][first])
    keys = list(ev["horizons"]) + ["same"]
    width = 0.8 / len(keys)
    for k, h in enumerate(keys):
        table = ev["same_session"] if h == "same" else ev["horizons"][h]
        ax.bar(np.arange(len(names)) + k * width, [table[n]["mean_ic"] for n in names], width,
               label="same session (not tradeable)" if h == "same" else f"h={h}")  # fmt: skip
    ax.set_xticks(
        np.arange(len(names)) + width * (len(keys) - 1) / 2, names, rotation=30, ha="right", fontsize=7
    )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("Mean rank IC by horizon")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    files["ic_by_horizon"] = str(out / "ic_by_horizon.png")
    fig.savefig(files["ic_by_horizon"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return files


GROUP_COLOURS = {"top third": "#16a34a", "positive": "#16a34a", "middle third": "#6b7280", "neutral": "#6b7280",
                 "bottom third": "#dc2626", "negative": "#dc2626"}  # fmt: skip


def event_study_plot(studies: dict[str, Any], path: Path) -> str:
    """One panel per signal: each group's mean cumulative abnormal return from -5 to +10 sessions around
    the news session, with its 95 % band (the picture a quant looks at first)."""
    import matplotlib.pyplot as plt

    names = [n for n, st in studies.items() if st["groups"]]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, sharex=True)
    for ax, name in zip(axes.ravel(), names):
        st = studies[name]
        rel = st["relative_sessions"]
        for group, g in st["groups"].items():
            colour = GROUP_COLOURS.get(group)
            ax.plot(rel, np.asarray(g["car"]) * 1e4, color=colour, label=f"{group} ({g['n_events']})")
            ax.fill_between(
                rel, np.asarray(g["lower"]) * 1e4, np.asarray(g["upper"]) * 1e4, color=colour, alpha=0.15
            )
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("sessions from the news session", fontsize=7)
        ax.set_ylabel("CAR (bp)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(names) :]:
        ax.set_visible(False)
    fig.suptitle("Event study: mean cumulative abnormal return by signal group, 95 % bands", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


CARD_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a1a1a;background:#f6f7f9}
h1{font-size:22px} h2{font-size:18px;margin-top:28px} table{border-collapse:collapse;font-size:12px;background:#fff}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:right} td:first-child,th:first-child{text-align:left}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px}
.row{display:flex;justify-content:space-between;align-items:center;margin-bottom:8px}
.impact{font-weight:600} .bar{height:6px;background:#e5e7eb;border-radius:3px;margin:4px 0 10px}
.bar>div{height:6px;border-radius:3px;background:#f59e0b}
.label{padding:2px 8px;border-radius:10px;font-size:12px;color:#fff}
.pos{background:#16a34a} .neg{background:#dc2626} .neu{background:#6b7280}
.tick{display:inline-block;margin:2px 4px 2px 0;padding:1px 6px;border-radius:6px;background:#eef2ff;font-size:12px}
.topic{display:inline-block;margin:2px 4px 2px 0;padding:1px 6px;border-radius:6px;background:#f1f5f9;font-size:11px}
.text{font-size:13px;line-height:1.4;margin-top:8px;max-height:9em;overflow:hidden}
img{max-width:100%;background:#fff}
"""


def _label_class(label: str) -> str:
    return "pos" if "positive" in label else "neg" if "negative" in label else "neu"


def _as_list(value: Any) -> list[Any]:
    return [] if value is None else list(value)  # parquet lists arrive as numpy arrays


def news_card(record: dict[str, Any], text_column: str) -> str:
    esc = html.escape
    tickers = "".join(
        f'<span class="tick">{esc(str(t["ticker"]))} {_f(t.get("sentiment_score"), 2)}</span>'
        for t in _as_list(record.get("tickers"))
    )
    topics = "".join(f'<span class="topic">{esc(str(t))}</span>' for t in _as_list(record.get("topics")))
    raw_impact = record.get("impact")
    impact = float("nan") if raw_impact is None else float(raw_impact)
    known = not math.isnan(impact)
    text = record.get(text_column)
    label = str(record["sentiment"])
    coarse = record.get("sentiment_coarse")
    shown = label if not coarse or coarse == label else f"{label} ({coarse})"
    return (
        '<div class="card">'
        f'<div class="row"><span class="impact">Market impact {_f(impact, 2) if known else "n/a"}</span>'
        f'<span class="label {_label_class(label)}">{esc(shown)}</span></div>'
        f'<div class="bar"><div style="width:{impact * 100 if known else 0:.0f}%"></div></div>'
        f"<div>Sentiment score <b>{float(record['sentiment_score']):+.2f}</b></div>"
        f"<div>{tickers}</div><div>{topics}</div>"
        + (f'<div class="text">{esc(str(text))}</div>' if isinstance(text, str) else "")
        + "</div>"
    )


def _img(path: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}">'


def write_report(
    out: Path,
    table: pd.DataFrame,
    summary: dict[str, Any],
    ev_md: str | None,
    images: dict[str, str],
    config: Any,
) -> Path:
    top = table.sort_values("impact", ascending=False).head(config.top_articles).to_dict("records")
    cards = "".join(news_card(r, config.text_column) for r in top)
    counts = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:,}</td></tr>" for k, v in summary["counts"].items()
    )
    body = [
        "<h1>newsimpact signals report</h1>",
        f"<p>Scores: <code>{html.escape(config.scores)}</code> · prices: "
        f"<code>{html.escape(str(config.prices))}</code> · made {html.escape(summary['made_at'])}</p>",
        f"<h2>Counts</h2><table>{counts}</table>",
    ]
    if ev_md is not None:
        body.append("<h2>Evaluation</h2>" + _markdown_tables_to_html(ev_md))
        body += [f"<h2>{html.escape(k.replace('_', ' '))}</h2>{_img(v)}" for k, v in images.items()]
    body.append(
        f'<h2>Top {len(top)} articles by market impact</h2><div class="cards" id="cards">{cards}</div>'
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>newsimpact signals</title>'
        f"<style>{CARD_CSS}</style></head><body>{''.join(body)}"
        "<script>document.body.dataset.cards=String(document.querySelectorAll('.card').length);</script>"
        "</body></html>"
    )
    path = out / "report.html"
    _atomic_write(path, page)
    return path


def _markdown_tables_to_html(md: str) -> str:
    parts, rows = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            head, *rest = rows
            parts.append(
                "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest)
                + "</table>"
            )  # fmt: skip
            rows = []
        if line.startswith("### "):
            parts.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.strip():  # a paragraph (**bold** as <b>)
            text = html.escape(line).split("**")
            parts.append("<p>" + "".join(f"<b>{t}</b>" if i % 2 else t for i, t in enumerate(text)) + "</p>")
    return "".join(parts)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
