"""Write the weak-label topic source (training/weak_labels.py) and a sample to read.

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


def corpora(data: Path) -> dict[str, list[str]]:
    import pandas as pd

    def col(path: Path, name: str = "text") -> list[str]:
        return [t for t in pd.read_parquet(path, columns=[name])[name] if isinstance(t, str)]

    fpb = pd.read_parquet(data / "fpb" / "train.parquet", columns=["text", "fingpt_split"])
    texts = {
        "tfn_topic": col(data / "tfn_topic" / "train.parquet"),
        "tfns": col(data / "tfns" / "train.parquet"),
        "sentfin": col(data / "sentfin" / "train.parquet"),
        "fnspid": col(data / "fnspid_sample" / "train.parquet"),
        # FPB's training file less FinGPT's test sentences (the FPB rows of the quality table); v2 read all
        # three files and FinGPT's test rows, for topics only
        "fpb": [t for t in fpb.loc[fpb["fingpt_split"] == "train", "text"] if isinstance(t, str)],
    }
    seen: set[str] = set()
    out = {}
    for name, rows in texts.items():
        out[name] = [t for t in rows if not (t in seen or seen.add(t))]
    return out


SETS = {"ai_guidance": ("ai", "guidance"), "earnings": ("earnings",)}


def tfn_pairs(data: Path, n: int):
    """``n`` training rows that each join two TFN-topic training tweets, labelled on every topic (set
    ``pairs``).

    TFN's tweets carry one topic each, and its 20 classes are exhaustive, so a pair's topics are known
    exactly: the union of the two tweets' classes (mapped as configs/data/tfn_topic.yaml maps them) and of
    the weak rules' topics of the joined text; every other topic is a "no". Single-topic tweets never
    show the model a text about two things (a wire story about AI revenue is about AI and results at
    once); joining texts without labelling the other topics (tried) made every topic fire on long text.
    Half the pairs start from a tweet an ai or guidance rule fires on, half of those joined with one of
    TFN's earnings tweets (news about AI or guidance next to results). Only tweets the tfn_topic source
    trains on (``dev_holdout`` false), written to the training split.
    """
    import pandas as pd
    import yaml

    from training.weak_labels import label

    config = yaml.safe_load((ROOT / "configs" / "data" / "tfn_topic.yaml").read_text())
    topic_map = config["sources"]["tfn_topic"]["topic_map"]
    tfn = pd.read_parquet(data / "tfn_topic" / "train.parquet", columns=["text", "label", "dev_holdout"])
    tweets = [
        (t, topic_map[c]) for t, c, held in tfn.itertuples(index=False) if not held and isinstance(t, str)
    ]
    weak = [i for i, (t, _) in enumerate(tweets) if set(label(t)) & {"ai", "guidance"}]
    rng = random.Random(17)
    out = []
    results = [i for i, (_, topic) in enumerate(tweets) if topic == "earnings"]
    for k in range(n):
        a = tweets[rng.choice(weak)] if k % 4 < 2 and weak else rng.choice(tweets)
        b = tweets[rng.choice(results)] if k % 4 == 0 and results else rng.choice(tweets)
        if a[0] == b[0]:
            continue
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        text = f"{a[0]} {b[0]}"
        topics = {a[1], b[1], *label(text)}
        out.append(
            {"text": text, "topics": sorted(topics), "corpus": "tfn_topic", "set": "pairs", "split": "train"}
        )
    return pd.DataFrame(out, columns=["text", "topics", "corpus", "set", "split"])


def _positives(frame, topic: str) -> int:
    """Rows positive for ``topic`` in the set that labels it."""
    mine = frame[frame["set"].map(lambda s: topic in SETS.get(s, ()))]
    return int(mine["topics"].map(lambda ts: topic in ts).sum())


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
    import pandas as pd

    from training.weak_labels import TOPICS, VERSION, label, split_of

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labelled, negatives = [], []
    for corpus, texts in corpora(Path(args.data)).items():
        for text in texts:
            topics = label(text)
            (labelled if topics else negatives).append({"text": text, "topics": topics, "corpus": corpus})
    # Two sets, each labelled only for its own rules' topics (the `set` column; configs/data/weak_topics.yaml
    # gives each its topic_scope): "ai_guidance" (every text its rules fire on) and "earnings" (a seeded
    # --max-earnings of the ~3,600 texts the earnings rules fire on: it keeps the source small and the base
    # rates closer), each with twice as many texts where no rule fires. So a text about AI is never an
    # "earnings: no" row only because no earnings rule fired on it (one set taught the model that AI news
    # is not about results), and a text of both kinds is a positive in both sets.
    rng = random.Random(13)
    rows = []
    for name, topics in SETS.items():
        positives = [dict(r, set=name) for r in labelled if set(r["topics"]) & set(topics)]
        if name == "earnings":
            positives = rng.sample(positives, min(len(positives), args.max_earnings))
        rows += positives + [dict(r, set=name) for r in rng.sample(negatives, 2 * len(positives))]
    frame = pd.DataFrame(rows)
    frame["split"] = frame["text"].map(split_of)
    frame = pd.concat([frame, tfn_pairs(Path(args.data), args.pairs)], ignore_index=True)
    for split, part in frame.groupby("split"):
        part.drop(columns="split").to_parquet(out / f"{split}.parquet", index=False)
    summary = {
        "version": VERSION,
        "rows": len(frame),
        "per_set": frame["set"].value_counts().to_dict(),
        "per_split": frame["split"].value_counts().to_dict(),
        "positives": {t: _positives(frame, t) for t in TOPICS},
        "per_corpus": {c: {t: _positives(g, t) for t in TOPICS} for c, g in frame.groupby("corpus")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
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
