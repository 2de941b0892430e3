"""Long articles: which chunk aggregation keeps a clear stance clear (``inference.sentiment_aggregation``).

    python scripts/bench_long_articles.py --model-dir bench_runs/quality/mix/model

There is no public long financial text with a document-level label in ../shared/data, so documents are
built from held-out labelled sentences: FinGPT's FPB test split (1,212 sentences no model here trained
on). A *stance* document is one positive or negative sentence with ``k`` neutral sentences around it (the
boilerplate, outlook and risk paragraphs of a wire story), the polar one first (a lede) or at a random
place; its label is the polar sentence's. A *neutral* document is ``k + 1`` neutral sentences (an
aggregation that invents a stance fails these). Each document is chunked by the scorer at the model's max
length; the chunks are scored once and combined by every rule. Reported: three-class accuracy per kind of
document and rule, and macro-F1 over all of them; the polar sentence alone is the ceiling.
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import machine, write_section  # noqa: E402

from inference.engine import Scorer  # noqa: E402
from inference.prep import Article  # noqa: E402
from inference.runner import configure_process  # noqa: E402
from training.choices import SentimentAggregation  # noqa: E402

BEGIN, END = "<!-- bench_long_articles:begin -->", "<!-- bench_long_articles:end -->"


def fpb_test(data_dir: Path) -> list[tuple[str, str]]:
    files = sorted(glob.glob(str(data_dir / "fpb" / "*.parquet")))
    if not files:
        raise SystemExit(f"no FPB parquet files under {data_dir / 'fpb'}; pass --data-dir")
    table = pa.concat_tables([pq.read_table(f, columns=["text", "label", "fingpt_split"]) for f in files])
    rows = table.to_pylist()
    return [(r["text"], r["label"]) for r in rows if r["fingpt_split"] == "test"]


def build_documents(
    sentences: list[tuple[str, str]], ks: list[int], n_neutral: int, seed: int, n_polar: int | None = None
) -> list[dict]:
    rng = random.Random(seed)
    neutral = [t for t, label in sentences if label == "neutral"]
    polar = [(t, label) for t, label in sentences if label != "neutral"][:n_polar]
    docs = []
    for k in ks:
        for place in ("lede", "random"):
            for text, label in polar:
                filler = rng.sample(neutral, k)
                at = 0 if place == "lede" else rng.randint(0, k)
                parts = filler[:at] + [text] + filler[at:]
                docs.append(
                    {
                        "kind": f"stance, {place}",
                        "k": k,
                        "label": label,
                        "text": " ".join(parts),
                        "polar": text,
                    }
                )
        for _ in range(n_neutral):
            docs.append(
                {"kind": "neutral", "k": k, "label": "neutral", "text": " ".join(rng.sample(neutral, k + 1))}
            )
    return docs


def macro_f1(true: list[str], pred: list[str]) -> float:
    f1s = []
    for c in sorted(set(true)):
        tp = sum(t == c and p == c for t, p in zip(true, pred))
        fp = sum(t != c and p == c for t, p in zip(true, pred))
        fn = sum(t == c and p != c for t, p in zip(true, pred))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--k", default="2,5,9", help="neutral sentences per document")
    parser.add_argument("--neutral-docs", type=int, default=300, help="all-neutral documents per k")
    parser.add_argument(
        "--polar", type=int, default=None, help="use only this many polar sentences (a quick run)"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--report", default="docs/bench_long_articles.json")
    parser.add_argument("--markdown", default="docs/experiments/news_card.md", help="'' for none")
    args = parser.parse_args()

    configure_process("cpu")
    start = time.perf_counter()
    docs = build_documents(
        fpb_test(Path(args.data_dir)),
        [int(k) for k in args.k.split(",")],
        args.neutral_docs,
        args.seed,
        args.polar,
    )
    scorer = Scorer(args.model_dir, precision="fp32")
    articles = [Article(str(i), d["text"], tickers=[]) for i, d in enumerate(docs)]
    chunks, tickers, _ = scorer.prepare(articles)
    outputs = scorer.chunk_outputs(chunks)
    n_chunks = np.bincount([c.article for c in chunks], minlength=len(docs))
    preds = {}
    for rule in SentimentAggregation.values():
        scorer.sentiment_aggregation = rule
        preds[rule] = [r["sentiment_coarse"] for r in scorer._aggregate(articles, chunks, tickers, *outputs)]
    polar = sorted({d["polar"] for d in docs if "polar" in d})
    alone = {a.id: r["sentiment_coarse"] for a, r in zip(
        [Article(t, t, tickers=[]) for t in polar], scorer.score([Article(t, t, tickers=[]) for t in polar])
    )}  # fmt: skip
    rows = []
    for kind in ("stance, lede", "stance, random", "neutral"):
        for k in sorted({d["k"] for d in docs}):
            sel = [i for i, d in enumerate(docs) if d["kind"] == kind and d["k"] == k]
            row = {"kind": kind, "k": k, "docs": len(sel), "chunks": float(n_chunks[sel].mean())}
            for rule in SentimentAggregation.values():
                row[rule] = float(np.mean([preds[rule][i] == docs[i]["label"] for i in sel]))
            if kind != "neutral":
                row["sentence alone"] = float(
                    np.mean([alone[docs[i]["polar"]] == docs[i]["label"] for i in sel])
                )
            rows.append(row)
    true = [d["label"] for d in docs]
    overall = {rule: {"accuracy": float(np.mean([p == t for p, t in zip(preds[rule], true)])),
                      "f1_macro": macro_f1(true, preds[rule])} for rule in SentimentAggregation.values()}  # fmt: skip
    info = {
        "command": "python scripts/bench_long_articles.py " + " ".join(sys.argv[1:]),
        "model_dir": args.model_dir,
        "machine": machine(),
        "documents": len(docs),
        "chunks": int(n_chunks.sum()),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }
    report = {"info": info, "rows": rows, "overall": overall}
    (ROOT / args.report).write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if args.markdown:
        write_section(
            ROOT / args.markdown, text, (BEGIN, END), "Long articles (`scripts/bench_long_articles.py`)"
        )
    print(
        f"bench_long_articles: {len(docs)} documents, {int(n_chunks.sum())} chunks in {info['minutes']} min"
    )


def markdown(report: dict) -> str:
    rules = list(SentimentAggregation.values())
    info = report["info"]
    lines = [
        f"Made by `{info['command']}` ({info['documents']:,} documents, {info['chunks']:,} chunks, "
        f"{info['minutes']} min on {info['machine']}). Three-class accuracy of the document label:",
        "",
        "| document | neutral sentences | docs | chunks per doc | "
        + " | ".join(f"`{r}`" for r in rules)
        + " | polar sentence alone |",
        "|---|---|---|---|" + "---|" * (len(rules) + 1),
    ]
    for row in report["rows"]:
        vals = " | ".join(f"{row[r]:.3f}" for r in rules)
        alone = f"{row['sentence alone']:.3f}" if "sentence alone" in row else "-"
        lines.append(
            f"| {row['kind']} | {row['k']} | {row['docs']} | {row['chunks']:.1f} | {vals} | {alone} |"
        )
    lines.append(
        "| **all documents** | | | | "
        + " | ".join(
            f"**{report['overall'][r]['accuracy']:.3f}** (macro-F1 {report['overall'][r]['f1_macro']:.3f})"
            for r in rules
        )
        + " | |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
