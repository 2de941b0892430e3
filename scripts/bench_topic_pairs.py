"""Topics that share a chunk: does a topic named in half of a text still fire? (issue 16's multi-topic check)

    python scripts/bench_topic_pairs.py --model-dir bench_runs/quality/mix/model

Wire stories are about several things at once (AI *and* results), while every topic-labelled training text
is about one (TFN's tweets carry one class each). This joins two of TFN-topic's ``dev_holdout`` tweets (no
training run trains on them) of different classes into one text, seeded, and scores the joined texts and
the tweets alone with the batch scorer's engine (same chunking and card as ``newsimpact score``). TFN's 20
classes are exhaustive, so the joined text's topics are exactly the two classes. Reported: the share of
joined texts where both topics reach the scorer's threshold (0.5) and where both are the two top-scored
topics; recall of a topic in a joined text against the same tweet alone; precision of the emitted TFN
topics (``ai`` and ``guidance`` are not TFN classes and are left out of precision). Written to
``--report`` and between the ``bench_topic_pairs`` markers of docs/experiments/news_card.md (``--markdown ''``: none).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import machine, write_section  # noqa: E402

from inference.engine import Scorer  # noqa: E402
from inference.prep import Article  # noqa: E402
from inference.runner import configure_process  # noqa: E402

MARKERS = ("<!-- bench_topic_pairs:begin -->", "<!-- bench_topic_pairs:end -->")
NOT_TFN = {"ai", "guidance"}  # weak-label topics: a TFN tweet says nothing about them


def dev_tweets(data: Path) -> list[tuple[str, str]]:
    """TFN-topic's dev_holdout tweets with their class mapped as configs/data/tfn_topic.yaml maps it."""
    config = yaml.safe_load((ROOT / "configs" / "data" / "tfn_topic.yaml").read_text())
    topic_map = config["sources"]["tfn_topic"]["topic_map"]
    frame = pd.read_parquet(data / "tfn_topic" / "train.parquet", columns=["text", "label", "dev_holdout"])
    frame = frame[frame["dev_holdout"]]
    return [
        (t, topic_map[c]) for t, c in zip(frame["text"], frame["label"]) if isinstance(t, str) and t.strip()
    ]


def make_pairs(tweets: list[tuple[str, str]], n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` seeded pairs of tweet indices of two different classes."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        a, b = rng.randrange(len(tweets)), rng.randrange(len(tweets))
        if tweets[a][1] != tweets[b][1]:
            pairs.append((a, b))
    return pairs


def measure(scorer: Scorer, tweets: list[tuple[str, str]], pairs: list[tuple[int, int]]) -> dict:
    used = sorted({i for p in pairs for i in p})
    start = time.perf_counter()
    single = scorer.score([Article(str(i), tweets[i][0]) for i in used])
    joined = scorer.score([Article(f"{a}+{b}", f"{tweets[a][0]} {tweets[b][0]}") for a, b in pairs])
    seconds = time.perf_counter() - start

    def scores(record: dict) -> dict[str, float]:
        return {t["topic"]: float(t["score"]) for t in record["topic_scores"]}

    alone = {i: scores(r) for i, r in zip(used, single)}
    threshold = scorer.topic_threshold
    both_found = both_top2 = hits = alone_hits = emitted = correct = 0
    per_topic: dict[str, list[int]] = {}
    for (a, b), record in zip(pairs, joined):
        s = scores(record)
        want = {tweets[a][1], tweets[b][1]}
        found = {t for t in want if s.get(t, 0.0) >= threshold}
        both_found += len(found) == 2
        top2 = sorted(s, key=s.get, reverse=True)[:2]
        both_top2 += set(top2) == want
        hits += len(found)
        for i in (a, b):
            topic = tweets[i][1]
            alone_hits += alone[i].get(topic, 0.0) >= threshold
            entry = per_topic.setdefault(topic, [0, 0, 0])
            entry[0] += 1
            entry[1] += s.get(topic, 0.0) >= threshold
            entry[2] += alone[i].get(topic, 0.0) >= threshold
        shown = {t for t, v in s.items() if v >= threshold and t not in NOT_TFN}
        emitted += len(shown)
        correct += len(shown & want)
    n = len(pairs)
    return {
        "pairs": n,
        "tweets": len(used),
        "both_found": both_found / n,
        "both_top2": both_top2 / n,
        "recall_joined": hits / (2 * n),
        "recall_alone": alone_hits / (2 * n),
        "precision_joined": correct / max(1, emitted),
        "topics_per_joined_text": emitted / n,
        "per_topic": {
            t: {"n": v[0], "recall_joined": v[1] / v[0], "recall_alone": v[2] / v[0]}
            for t, v in sorted(per_topic.items())
        },
        "seconds": round(seconds, 1),
    }


def markdown(info: dict, result: dict) -> str:
    worst = sorted(result["per_topic"].items(), key=lambda kv: kv[1]["recall_joined"])[:5]
    lines = [
        f"Made by `{info['command']}` ({info['machine']}; model `{info['model']}`): {result['pairs']} joined "
        f"texts of two TFN-topic dev_holdout tweets of different classes ({result['tweets']} tweets), threshold "
        f"0.5, {result['seconds']} s.",
        "",
        "| both topics found | both are the top two | recall joined / alone | precision joined (TFN topics) | topics shown per text |",
        "|---|---|---|---|---|",
        f"| {result['both_found']:.3f} | {result['both_top2']:.3f} | {result['recall_joined']:.3f} / "
        f"{result['recall_alone']:.3f} | {result['precision_joined']:.3f} | {result['topics_per_joined_text']:.2f} |",
        "",
        "Lowest recall in joined texts: "
        + ", ".join(
            f"{t} {v['recall_joined']:.2f} (alone {v['recall_alone']:.2f}, n={v['n']})" for t, v in worst
        )
        + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--report", default="docs/bench_topic_pairs.json")
    parser.add_argument("--markdown", default="docs/experiments/news_card.md", help="'' for none")
    parser.add_argument("--title", default="Topics that share a chunk (`scripts/bench_topic_pairs.py`)")
    args = parser.parse_args()

    data = Path(args.data)
    if not (data / "tfn_topic" / "train.parquet").is_file():
        raise SystemExit(f"bench_topic_pairs: {data / 'tfn_topic' / 'train.parquet'} not found; set --data")
    configure_process("cpu")
    tweets = dev_tweets(data)
    scorer = Scorer(args.model_dir, precision="fp32", topic_threshold=0.5)
    result = measure(scorer, tweets, make_pairs(tweets, args.pairs, args.seed))
    meta = json.loads((Path(args.model_dir) / "newsimpact.json").read_text())
    info = {
        "command": "python scripts/bench_topic_pairs.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "model": Path(args.model_dir).name,
        "topic_pooling": meta.get("topic_pooling", "chunk"),
    }
    Path(ROOT / args.report).write_text(json.dumps({"info": info, "result": result}, indent=2))
    text = markdown(info, result)
    print(text)
    if args.markdown:
        write_section(ROOT / args.markdown, text, MARKERS, args.title)
    print(f"bench_topic_pairs: {result['pairs']} joined texts scored; report in {args.report}")


if __name__ == "__main__":
    main()
