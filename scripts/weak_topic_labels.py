"""Write the weak-label topic source (training/weak_labels.py) and a sample to read.

    python scripts/weak_topic_labels.py [--data ../shared/data] [--out weak_topics] [--sample 100]

Reads the in-domain text of ../shared/data, training splits only (TFN topic and TFNS tweets, SEntFiN and
FNSPID headlines, FPB sentences: no held-out evaluation text; duplicates once), labels it with ``training.weak_labels.label``, and writes OUT/{train,
validation,test}.parquet (``text``, ``topics``, ``corpus``): every text a rule fires on, plus twice as many
where none does (seeded). ``--sample`` positives per topic (seeded) go to OUT/sample_<topic>.jsonl for a
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


def corpora(data: Path) -> dict[str, list[str]]:
    import pandas as pd

    def col(path: Path, name: str = "text") -> list[str]:
        return [t for t in pd.read_parquet(path, columns=[name])[name] if isinstance(t, str)]

    texts = {
        "tfn_topic": col(data / "tfn_topic" / "train.parquet"),
        "tfns": col(data / "tfns" / "train.parquet"),
        "sentfin": col(data / "sentfin" / "train.parquet"),
        "fnspid": [
            t for s in ("train", "validation", "test") for t in col(data / "fnspid_sample" / f"{s}.parquet")
        ],
        "fpb": [t for p in sorted((data / "fpb").glob("*.parquet")) for t in col(p)],
    }
    seen: set[str] = set()
    out = {}
    for name, rows in texts.items():
        out[name] = [t for t in rows if not (t in seen or seen.add(t))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--out", default="weak_topics")
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="of the reading sample")
    parser.add_argument("--exclude", nargs="*", default=[], help="sample files already read: drawn anew")
    args = parser.parse_args()
    import pandas as pd

    from training.weak_labels import TOPICS, VERSION, label, split_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, negatives = [], []
    for corpus, texts in corpora(Path(args.data)).items():
        for text in texts:
            topics = label(text)
            (rows if topics else negatives).append({"text": text, "topics": topics, "corpus": corpus})
    rng = random.Random(13)
    rows += rng.sample(negatives, min(len(negatives), 2 * len(rows)))
    frame = pd.DataFrame(rows)
    frame["split"] = frame["text"].map(split_of)
    for split, part in frame.groupby("split"):
        part.drop(columns="split").to_parquet(out / f"{split}.parquet", index=False)
    summary = {
        "version": VERSION,
        "rows": len(frame),
        "per_split": frame["split"].value_counts().to_dict(),
        "positives": {t: int(frame["topics"].map(lambda ts, t=t: t in ts).sum()) for t in TOPICS},
        "per_corpus": {
            c: {t: int(g["topics"].map(lambda ts, t=t: t in ts).sum()) for t in TOPICS}
            for c, g in frame.groupby("corpus")
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    read = {json.loads(line)["text"] for path in args.exclude for line in Path(path).read_text().splitlines()}
    for topic in TOPICS:
        positives = [r for r in rows if topic in r["topics"] and r["text"] not in read]
        sample = random.Random(args.seed).sample(positives, min(args.sample, len(positives)))
        with open(out / f"sample_{topic}.jsonl", "w") as fh:
            for r in sample:
                fh.write(json.dumps({"corpus": r["corpus"], "text": r["text"]}) + "\n")


if __name__ == "__main__":
    main()
