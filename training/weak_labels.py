"""Weak topic labels: versioned phrase rules for the topics no labelled dataset has (``ai``, ``guidance``)
and for ``earnings`` in the registers TFN's earnings tweets do not cover (wire sentences, headlines).

``label(text)`` returns the topics whose rules fire. ``python scripts/weak_topic_labels.py`` runs them over
in-domain text (TFN topic tweets, SEntFiN and FNSPID headlines, FPB sentences) and writes a data source in
the canonical schema: every row with a firing rule, plus twice as many rows where none fires, split
80/10/10 by a hash of the text (:func:`split_of`); each row is labelled for ``TOPICS`` only
(``topic_scope`` in configs/data/weak_topics.yaml), so it teaches nothing about the other topics. The precision of each rule, read by hand on a seeded sample, is in
docs/BENCHMARKS.md ("Weak topic labels"). Change a rule: bump ``VERSION`` and measure again.
"""

from __future__ import annotations

import hashlib
import re

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
