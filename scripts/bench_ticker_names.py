"""How often the packaged company-name maps find a ticker in real headlines, and how often wrongly.

    python scripts/bench_ticker_names.py [--data ../shared/data] [--sample 60]

- ``india_sentfin`` on SEntFiN's test headlines (held out from nothing the map was built from: the map is
  the paper's entity table, the headlines are annotated separately): a match is correct when the headline's
  annotated entities include that company (an annotated entity string that the entity table maps to the
  same symbol). Reports precision against the annotation (a lower bound: annotators skipped some
  mentions) and recall of annotated companies.
- ``us_stocknet`` on FNSPID's headlines (AA and AAPL news) and TFNS tweets: no entity annotation, so a
  seeded random sample of matches is written to docs/ticker_names_sample.md for a person to mark
  (a ``correct`` column, filled by hand: does the headline name that company?).

Writes docs/bench_ticker_names.json and prints a table for docs/experiments/tickers.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def sentfin_check(data: Path, matcher, names: dict[str, str]) -> dict:
    import pandas as pd

    rows = pd.read_parquet(data / "sentfin" / "test.parquet")
    table = pd.read_parquet(data / "sentfin" / "entities.parquet")
    alias_symbol = {a.strip().lower(): s for s, aliases in table.itertuples(index=False) for a in aliases}
    lower_names = {k.lower(): v for k, v in names.items()}
    mapped_symbols = set(names.values())
    tp = fp = annotated = found = 0
    wrong: list[dict] = []
    for text, group in rows.groupby("text"):
        truth = set()
        for entity in group["entity"]:
            symbol = lower_names.get(entity.strip().lower()) or alias_symbol.get(entity.strip().lower())
            if symbol in mapped_symbols:
                truth.add(symbol)
        predicted = {t for _, t in matcher.find(text)}
        tp += len(predicted & truth)
        fp += len(predicted - truth)
        annotated += len(truth)
        found += len(predicted & truth)
        if predicted - truth and len(wrong) < 25:
            wrong.append({"headline": text, "extra": sorted(predicted - truth), "annotated": sorted(truth)})
    return {
        "headlines": int(rows["text"].nunique()),
        "matches": tp + fp,
        "precision_vs_annotation": round(tp / (tp + fp), 3) if tp + fp else None,
        "recall_of_annotated_companies": round(found / annotated, 3) if annotated else None,
        "annotated_companies": annotated,
        "unannotated_matches_sample": wrong,
    }


def us_sample(data: Path, matcher, n: int) -> tuple[dict, list[dict]]:
    import pandas as pd

    texts: list[tuple[str, str]] = []
    for split in ("train", "validation", "test"):
        for text in pd.read_parquet(data / "fnspid_sample" / f"{split}.parquet", columns=["text"])["text"]:
            texts.append(("fnspid", text))
    for text in pd.read_parquet(data / "tfns" / "train.parquet", columns=["text"])["text"]:
        texts.append(("tfns", text))
    found = [(src, text, m) for src, text in texts for m in matcher.find(text)]
    per = {}
    for src in ("fnspid", "tfns"):
        n_texts = sum(1 for s, _ in texts if s == src)
        hits = [f for f in found if f[0] == src]
        per[src] = {
            "texts": n_texts,
            "matches": len(hits),
            "texts_with_a_match": len({t for s, t, _ in hits}),
            "matches_per_1k": round(1000 * len(hits) / n_texts, 1),
        }
    rng = random.Random(0)
    sample = rng.sample(found, min(n, len(found)))
    lines = [
        {"source": src, "text": text, "at": start, "ticker": ticker, "matched": text[start : start + 40]}
        for src, text, (start, ticker) in sample
    ]
    return per, lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--sample", type=int, default=60)
    args = parser.parse_args()
    from inference.prep import packaged_ticker_map
    from training.tickers import NameMatcher

    data = Path(args.data)
    india = packaged_ticker_map("india_sentfin")
    us = packaged_ticker_map("us_stocknet")
    result = {"india_sentfin_on_sentfin_test": sentfin_check(data, NameMatcher(india), india)}
    per, sample = us_sample(data, NameMatcher(us), args.sample)
    result["us_stocknet"] = per
    result["us_stocknet_sample"] = sample
    (ROOT / "docs" / "bench_ticker_names.json").write_text(
        json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    )
    s = result["india_sentfin_on_sentfin_test"]
    print(
        f"india_sentfin on {s['headlines']} SEntFiN test headlines: {s['matches']} matches, precision vs "
        f"annotation {s['precision_vs_annotation']}, recall {s['recall_of_annotated_companies']}"
    )
    for src, v in per.items():
        print(f"us_stocknet on {v['texts']} {src} texts: {v['matches']} matches ({v['matches_per_1k']}/1k)")
    for row in sample:
        print(f"  [{row['ticker']}] {row['matched']!r} | {row['text'][:110]!r}")


if __name__ == "__main__":
    main()
