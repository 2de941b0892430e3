"""Weak topic labels: versioned phrase rules for the topics no labelled dataset has (``ai``, ``guidance``)
and for ``earnings`` in the registers TFN's earnings tweets do not cover (wire sentences, headlines).

``label(text)`` returns the topics whose rules fire. ``python scripts/weak_topic_labels.py`` runs them over
in-domain text (TFN topic tweets, SEntFiN and FNSPID headlines, FPB sentences) and writes a data source in
the canonical schema: every row with a firing rule, plus twice as many rows where none fires, split
80/10/10 by a hash of the text (:func:`split_of`); each row is labelled for ``TOPICS`` only
(``topic_scope`` in configs/data/weak_topics.yaml), so it teaches nothing about the other topics. The precision of each rule, read by hand on a seeded sample, is in
docs/experiments/weak_topics.md. Change a rule: bump ``VERSION`` and measure again.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

VERSION = 3  # 1: first rules; 2: guidance exclusions after reading the v1 sample; 3: earnings
TOPICS = ("ai", "guidance", "earnings")

# Case matters for the acronym ("AI" the topic, not "ai" in words or Air India's flight codes below).
_AI = [
    re.compile(r"(?<![\w-])(?:AI|A\.I\.|GenAI|Gen AI)(?![\w-])"),
    re.compile(
        r"\b(?:artificial intelligence|machine learning|deep learning|generative|large language models?|"
        r"chatbots?|ChatGPT|OpenAI|neural networks?|Copilot|Nvidia's H100|data ?cent(?:er|re) (?:chips|GPUs))\b",
        re.IGNORECASE,
    ),
    re.compile(r"\bLLMs?\b"),
]
_NOT_AI = re.compile(r"\bAI (?:flight|Express|[0-9]{2,4})\b|\bAir India\b")

_GUIDANCE = [
    re.compile(r"\bguidance\b", re.IGNORECASE),
    re.compile(
        r"\b(?:raises?|raised|lifts?|lifted|boosts?|hikes?|cuts?|lowers?|lowered|trims?|slashes?|"
        r"reaffirms?|reiterates?|maintains?|withdraws?|suspends?|narrows?|ups|sets?|issues?)\b"
        r"[^.;:]{0,40}?\b(?:outlook|forecasts?|guidance|view)\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\bsees\s+(?:Q[1-4]|FY|fiscal|full[- ]year|(?:first|second|third|fourth)[- ]quarter|20\d\d)",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:full[- ]year|annual|FY\s?\d*|fiscal(?:[- ]year)?(?: 20\d\d)?)\s+(?:outlook|forecast|guidance)\b",
        re.IGNORECASE,
    ),
    re.compile(r"\bprofit warning\b|\bwarns\b[^.;:]{0,30}\b(?:earnings|sales|revenue)\b", re.IGNORECASE),
]
# Not a company's guidance (v2, from reading the v1 sample): an analyst's or a bank's forecast or price
# target, a commodity or economic forecast, a central bank's or regulator's guidance, a rating agency's
# outlook on a country, "our outlook" of a commentator.
_NOT_GUIDANCE = re.compile(
    r"\bprice targets?\b|\bprice forecasts?\b|\bour outlook\b"
    r"|\b(?:forward|future|prior) guidance\b|\bguidance (?:note|on how|for the|on recession)\b"
    r"|\b(?:PBOC|RBI|ECB|Fed|central bank|Lagarde|SEBI|BSE|regulators?|PMIs?|IMF|International Monetary Fund"
    r"|Asian Development Bank|World Bank|S&P|Moody's|Fitch)\b"
    r"|\b(?:Goldman|Morgan Stanley|UBS|Macquarie|StanChart|Standard Chartered|Citi|Barclays|analysts?|"
    r"brokerages?)\b[^.;:]{0,40}\b(?:forecasts?|outlook)\b"
    r"|\b(?:GDP|gross domestic product|growth|inflation|rates?|weather|monsoon|economists?|economy|gold|silver|"
    r"oil|copper|metals?|Brent)\b[^;:]{0,25}\b(?:outlook|forecasts?)\b"
    r"|\b(?:outlook|forecasts?)\b[^;:]{0,20}\b(?:GDP|gross domestic product|growth|inflation|rates?|economy)\b",
    re.IGNORECASE,
)


# A company's reported results: its profit/revenue lines, a reporting period next to results, results that
# beat or missed. (TFN's earnings tweets teach the topic on tweets; these rules add the wording of wire
# sentences and headlines, e.g. "Q3 net profit up 40 %", "operating profit rose to EUR 13.1 mn".)
_EARNINGS = [
    re.compile(
        r"\b(?:net (?:profit|income|loss|earnings|sales)|operating (?:profit|income|loss|result|margin)|"
        r"pre-?tax (?:profit|loss)|profit (?:before|after) tax(?:es)?|EBITDA|EBIT|earnings per share|EPS|"
        r"comparable sales|same-store sales|quarterly (?:results|earnings|profits?|loss|revenues?|sales|numbers))\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:Q[1-4]|[1-4]Q|(?:first|second|third|fourth)[- ]quarter|(?:full|half|fiscal)[- ]year|nine[- ]month|"
        r"interim|annual)\b[^.;:]{0,30}\b(?:results?|earnings|profits?|loss|net|revenues?|sales|numbers|EPS|"
        r"income)\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:earnings|results)\s+(?:beat|miss|top|call|release|report|season|preview|date|estimates?|growth)\b"
        r"|\b(?:beats?|miss(?:es)?|tops?)\b[^.;:]{0,20}\b(?:estimates|expectations|consensus)\b",
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:revenues?|sales|turnover|profits?)\b[^.;:]{0,40}\b(?:rose|fell|increased|decreased|jumped|"
        r"dropped|declined|grew|surged|slumped|totall?ed|amounted|climbed|doubled|plunged|soared)\b",
        re.IGNORECASE,
    ),
]


# "annual profit forecast", "Q3 revenue guidance": a forecast of results is guidance, not results
_FORECAST_AFTER = re.compile(r"\s*(?:forecasts?|outlook|guidance|view|targets?|estimates?)\b", re.IGNORECASE)


_FORECAST_BEFORE = re.compile(
    r"\b(?:sees|expects?|forecasts?|projects?|guides?|predicts?)\s+(?:\w+\s+)?$", re.I
)


def _reported(match: re.Match[str], text: str) -> bool:
    before = text[max(0, match.start() - 30) : match.start()]
    return not (_FORECAST_AFTER.match(text, match.end()) or _FORECAST_BEFORE.search(before))


def label(text: str) -> list[str]:
    """The weak topics of one text (possibly none)."""
    topics = []
    if any(r.search(text) for r in _AI) and not _NOT_AI.search(text):
        topics.append("ai")
    if any(r.search(text) for r in _GUIDANCE) and not _NOT_GUIDANCE.search(text):
        topics.append("guidance")
    if any(_reported(m, text) for r in _EARNINGS for m in r.finditer(text)):
        topics.append("earnings")
    return topics


def split_of(text: str) -> str:
    """train / validation / test by a hash of the text (80/10/10): stable across runs and corpora."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


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
    out: dict[str, list[str]] = {}
    for name, rows in texts.items():  # the first corpus that holds a text keeps it
        out[name] = []
        for t in rows:
            if t not in seen:
                seen.add(t)
                out[name].append(t)
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

    from training.packaged_models import configs_dir

    config = yaml.safe_load((configs_dir() / "data" / "tfn_topic.yaml").read_text())
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


# The public datasets (folders of NEWSIMPACT_DATA_DIR) and files the weak-label source is built from.
INPUTS = {
    "tfn_topic": ["train.parquet"],
    "tfns": ["train.parquet"],
    "sentfin": ["train.parquet"],
    "fnspid_sample": ["train.parquet"],
    "fpb": ["train.parquet"],
}


def build_frame(data: Path, pairs: int = 1000, max_earnings: int = 1000):
    """The weak-label source as one frame (``text``, ``topics``, ``corpus``, ``set``, ``split``).

    Two sets, each labelled only for its own rules' topics (the ``set`` column; configs/data/weak_topics.yaml
    gives each its topic_scope): "ai_guidance" (every text its rules fire on) and "earnings" (a seeded
    ``max_earnings`` of the ~3,600 texts the earnings rules fire on: it keeps the source small and the base
    rates closer), each with twice as many texts where no rule fires. So a text about AI is never an
    "earnings: no" row only because no earnings rule fired on it (one set taught the model that AI news is
    not about results), and a text of both kinds is a positive in both sets. Then ``pairs`` joined TFN-topic
    tweets labelled on every topic (:func:`tfn_pairs`)."""
    import pandas as pd

    labelled: list[dict[str, Any]] = []
    negatives: list[dict[str, Any]] = []
    for corpus, texts in corpora(data).items():
        for text in texts:
            topics = label(text)
            (labelled if topics else negatives).append({"text": text, "topics": topics, "corpus": corpus})
    rng = random.Random(13)
    rows = []
    for name, scope in SETS.items():
        positives = [dict(r, set=name) for r in labelled if set(r["topics"]) & set(scope)]
        if name == "earnings":
            positives = rng.sample(positives, min(len(positives), max_earnings))
        rows += positives + [dict(r, set=name) for r in rng.sample(negatives, 2 * len(positives))]
    frame = pd.DataFrame(rows)
    frame["split"] = frame["text"].map(split_of)
    return pd.concat([frame, tfn_pairs(data, pairs)], ignore_index=True)


def write_source(frame: Any, out: Path) -> dict[str, Any]:
    """``out/{train,validation,test}.parquet`` and ``out/summary.json`` (returned) from :func:`build_frame`."""
    out.mkdir(parents=True, exist_ok=True)
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
    return summary
