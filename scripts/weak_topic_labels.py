"""Write the weak-label topic source (training/weak_labels.py) and a sample to read.

Training builds the same source on first use into the cache (training/derived.py); this script writes it
where you say, with a sample of each topic's positives for a person to read.

    python scripts/weak_topic_labels.py [--data ../shared/data] [--out weak_topics] [--sample 100]

Reads the in-domain text of ../shared/data, training splits only (TFN topic and TFNS tweets, SEntFiN and
FNSPID headlines, FPB sentences of FinGPT's training split: no held-out evaluation text; duplicates once),
labels it with ``training.weak_labels.label``, and writes OUT/{train,validation,test}.parquet (``text``,
``topics``, ``corpus``, ``set``) in two sets, each labelled for its own topics only (:data:`SETS`): every
text an ai or guidance rule fires on, and ``--max-earnings`` of those the earnings rules fire on, each with
twice as many texts where no rule fires (seeded); and ``--pairs`` joined TFN-topic tweets labelled on every
topic (:func:`tfn_pairs`). ``--sample`` positives per topic (seeded) go to OUT/sample_<topic>.jsonl for a
person to read. Train on it with data=weak_topics (NEWSIMPACT_WEAK_TOPICS=OUT) or the mix experiment.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default="weak_topics")
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=1000, help="joined TFN-topic tweets (tfn_pairs())")
    parser.add_argument(
        "--max-earnings", type=int, default=1000, help="texts of the earnings set the rules fire on (seeded)"
    )
    parser.add_argument("--seed", type=int, default=0, help="of the reading sample")
    parser.add_argument("--exclude", nargs="*", default=[], help="sample files already read: drawn anew")
    args = parser.parse_args()
    from training.weak_labels import SETS, TOPICS, build_frame, write_source

    frame = build_frame(Path(args.data), pairs=args.pairs, max_earnings=args.max_earnings)
    out = Path(args.out)
    summary = write_source(frame, out)
    print(json.dumps(summary, indent=1))
    rows = frame.to_dict("records")
    read = {json.loads(line)["text"] for path in args.exclude for line in Path(path).read_text().splitlines()}
    for topic in TOPICS:
        positives = [
            r
            for r in rows
            if topic in r["topics"] and r["text"] not in read and topic in SETS.get(r["set"], ())
        ]
        sample = random.Random(args.seed).sample(positives, min(args.sample, len(positives)))
        with open(out / f"sample_{topic}.jsonl", "w") as fh:
            for r in sample:
                fh.write(json.dumps({"corpus": r["corpus"], "text": r["text"]}) + "\n")


if __name__ == "__main__":
    main()
