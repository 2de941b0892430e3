"""Weak topic labels for topics no labelled dataset has (``ai``, ``guidance``): versioned phrase rules.

``label(text)`` returns the topics whose rules fire. ``python scripts/weak_topic_labels.py`` runs them over
in-domain text (TFN topic tweets, SEntFiN and FNSPID headlines, FPB sentences) and writes a data source in
the canonical schema: every row with a firing rule, plus twice as many rows where none fires, split
80/10/10 by a hash of the text (:func:`split_of`); each row is labelled for ``ai`` and ``guidance`` only
(``topic_scope`` in configs/data/weak_topics.yaml), so it teaches nothing about the other topics. The precision of each rule, read by hand on a seeded sample, is in
docs/BENCHMARKS.md ("Weak topic labels"). Change a rule: bump ``VERSION`` and measure again.
"""

from __future__ import annotations

import hashlib
import re

VERSION = 2  # 1: first rules; 2: guidance exclusions after reading the v1 sample
TOPICS = ("ai", "guidance")

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


def label(text: str) -> list[str]:
    """The weak topics of one text (possibly none)."""
    topics = []
    if any(r.search(text) for r in _AI) and not _NOT_AI.search(text):
        topics.append("ai")
    if any(r.search(text) for r in _GUIDANCE) and not _NOT_GUIDANCE.search(text):
        topics.append("guidance")
    return topics


def split_of(text: str) -> str:
    """train / validation / test by a hash of the text (80/10/10): stable across runs and corpora."""
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"
