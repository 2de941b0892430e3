"""The news card on wire-style articles: what one exported model shows for each (issue 16's check).

    python scripts/bench_cards.py --model-dir bench_runs/quality/mix/model

Six short wire stories (a headline and a summary of a few hundred characters), written for this check and
in no dataset, each with the topics and the direction a reader would give it. They are scored by the batch
scorer's engine exactly as ``newsimpact score`` scores them (same chunking, same card), and the cards go to
``--report`` (JSON) and, between the ``bench_cards`` markers, into docs/experiments/news_card.md next to what was
expected. A handful of articles is a reading aid, not a metric: the figures with a sample size are in the
quality table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import machine, write_section  # noqa: E402

from inference.engine import Scorer  # noqa: E402
from inference.prep import Article  # noqa: E402
from inference.runner import configure_process  # noqa: E402

MARKERS = ("<!-- bench_cards:begin -->", "<!-- bench_cards:end -->")

# (id, text, expected topics, expected coarse direction)
ARTICLES = [
    (
        "ai-cloud",
        "Alibaba (NYSE: BABA) cloud revenue jumps 26% as AI demand accelerates. Alibaba Group said revenue "
        "at its cloud intelligence unit rose 26% in the September quarter, the fastest pace in two years, "
        "as customers rushed to rent computing power for artificial intelligence models. Group revenue came "
        "in ahead of analysts' estimates and adjusted earnings per share beat the consensus. Chief executive "
        "Eddie Wu said AI-related product revenue had grown at triple-digit rates for a fifth straight "
        "quarter and that the company would keep investing in data centres.",
        ["ai", "earnings"],
        "positive",
    ),
    (
        "guidance-cut",
        "Microchip Technology (NASDAQ: MCHP) cuts full-year outlook as industrial demand slumps. The chip "
        "maker lowered its fiscal 2025 revenue forecast for the second time this year, saying customers in "
        "Europe and Asia were still working through excess inventory. It now expects sales to fall about "
        "40% from a year earlier and said it would idle two factories for several weeks. Shares fell 9% in "
        "after-hours trading.",
        ["guidance"],
        "negative",
    ),
    (
        "merger",
        "Synopsys (NASDAQ: SNPS) agrees to buy Ansys for $35 billion in cash and stock. The deal, the largest "
        "in the chip-design software industry, values Ansys at $390 a share, a 29% premium to its price "
        "before reports of the talks. The companies expect the combination to close in the first half of "
        "2025, subject to regulatory approvals, and to add to Synopsys' adjusted earnings in the second full "
        "year.",
        ["m&a"],
        "positive",
    ),
    (
        "central-bank",
        "Fed holds rates steady, signals cuts later this year. The Federal Reserve kept its benchmark rate "
        "in a 5.25%-5.50% range for a fifth straight meeting and said it would not cut until it had greater "
        "confidence that inflation was moving sustainably toward 2%. Policymakers' projections still show "
        "three quarter-point reductions by the end of the year. Treasury yields eased after the statement.",
        ["central banks"],
        "neutral",
    ),
    (
        "regulation",
        "Boeing (NYSE: BA) faces criminal charge recommendation over 737 MAX safety. U.S. prosecutors have "
        "recommended that the Justice Department bring criminal charges against Boeing after finding the "
        "company violated a 2021 settlement over two fatal crashes. A guilty plea could jeopardise its "
        "government contracts. The planemaker said it had honoured the terms of the agreement.",
        ["legal & regulation"],
        "negative",
    ),
    (
        "long-balanced",
        "Nvidia (NASDAQ: NVDA) quarterly revenue triples to a record on AI chip demand. Nvidia reported "
        "third-quarter revenue of $18.1 billion, up 206% from a year earlier and well above Wall Street "
        "estimates, as cloud providers and start-ups raced to buy its H100 processors for generative AI. "
        "Data centre revenue more than quadrupled and net income rose to $9.2 billion. The company forecast "
        "fourth-quarter revenue of about $20 billion, ahead of analysts' expectations. "
        "Risk factors: the company said new U.S. export rules would restrict sales of some chips to China "
        "and other countries, which made up 20% to 25% of data centre sales in recent quarters; it expects a "
        "significant decline in those sales but said strong growth elsewhere should more than offset it. "
        "Supply of advanced packaging remains tight, and the company depends on a small number of "
        "manufacturing partners. The results were released after the close; the next report is due in "
        "February.",
        ["ai", "earnings", "guidance"],
        "positive",
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--report", default="docs/bench_cards.json")
    parser.add_argument("--markdown", default="docs/experiments/news_card.md", help="'' for none")
    parser.add_argument("--title", default="News cards on wire-style articles (`scripts/bench_cards.py`)")
    args = parser.parse_args()

    configure_process("cpu")
    scorer = Scorer(args.model_dir, precision="fp32", topic_threshold=0.5)
    records = scorer.score([Article(i, text) for i, text, _, _ in ARTICLES])
    rows = []
    for (key, _, topics, direction), record in zip(ARTICLES, records):
        scores = {t["topic"]: round(float(t["score"]), 3) for t in record["topic_scores"]}
        rows.append(
            {
                "id": key,
                "expected_topics": topics,
                "expected_direction": direction,
                "sentiment": record["sentiment"],
                "sentiment_coarse": record["sentiment_coarse"],
                "sentiment_score": round(record["sentiment_score"], 3),
                "impact": None if record["impact"] is None else round(record["impact"], 3),
                "topics": list(record["topics"]),
                "expected_topic_scores": {t: scores.get(t) for t in topics},
                "tickers": [
                    {
                        "ticker": t["ticker"],
                        "sentiment_score": t["sentiment_score"] and round(t["sentiment_score"], 3),
                    }
                    for t in record["tickers"]
                ],
                "n_chunks": record["n_chunks"],
            }
        )
    info = {
        "command": "python scripts/bench_cards.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "model": _model_name(Path(args.model_dir)),
    }
    (ROOT / args.report).write_text(json.dumps({"info": info, "cards": rows}, indent=2))
    text = markdown(info, rows)
    print(text)
    if args.markdown:
        write_section(ROOT / args.markdown, text, MARKERS, args.title)


def _model_name(model_dir: Path) -> str:
    """The experiment the exported model was trained by (its run.json), else the folder's name."""
    meta = json.loads((model_dir / "newsimpact.json").read_text())
    run = Path(str(meta.get("exported_from", {}).get("run_dir", ""))) / "run.json"
    if run.is_file():
        return json.loads(run.read_text())["config"]["name"]
    return model_dir.name


def markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        f"Made by `{info['command']}` ({info['machine']}; model `{info['model']}`). Topics shown at the "
        "scorer's threshold 0.5; the expected topics' scores in brackets.",
        "",
        "| article | expected | label (coarse) | score | impact | topics | expected topics' scores | tickers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        tickers = ", ".join(
            f"{t['ticker']} {t['sentiment_score']:+.2f}" if t["sentiment_score"] is not None else t["ticker"]
            for t in r["tickers"]
        )
        expected = ", ".join(
            f"{t} ({'-' if s is None else f'{s:.2f}'})" for t, s in r["expected_topic_scores"].items()
        )
        impact = "-" if r["impact"] is None else f"{r['impact']:.2f}"
        lines.append(
            f"| {r['id']} ({r['n_chunks']} chunks) | {r['expected_direction']}; {', '.join(r['expected_topics'])} "
            f"| {r['sentiment']} ({r['sentiment_coarse']}) | {r['sentiment_score']:+.2f} | {impact} "
            f"| {', '.join(r['topics']) or '-'} | {expected} | {tickers or '-'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
