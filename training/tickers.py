"""Finding ticker mentions in text, shared by training (target sentiment) and scoring (extraction).

The model scores a ticker by pooling the token states of its mentions, so both sides need the same notion
of "where is this ticker mentioned": a cashtag (``$BABA``), the bare symbol as a word (``BABA``), an
exchange notation (``(NYSE: BABA)``) or one of its names (``Alibaba``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

_EXCHANGES = (
    r"NYSE(?:\s+American|\s+Arca)?|NASDAQ|Nasdaq|AMEX|LSE|TSX|TSXV|HKEX|SEHK|ASX|NSE|BSE|XETRA|Euronext|OTC"
)
_EXCHANGE_RE = re.compile(rf"\(\s*(?:{_EXCHANGES})\s*:\s*([A-Z][A-Z0-9]{{0,6}}(?:\.[A-Z]{{1,2}})?)\s*\)")
_CASHTAG_RE = re.compile(r"(?<![\w$])\$([A-Z][A-Z0-9]{0,5}(?:\.[A-Z]{1,2})?)\b")


# A possessive or plural directly after a name still mentions it: "Alibaba's", "HULs" (apostrophe lost).
_POSSESSIVE = r"(?:['\u2019]?s)?"


# The patterns start with the name itself, so the regex engine can jump between occurrences of its first
# characters; the word boundary before a mention (and a cashtag's "$") is checked in Python on the few
# candidates (:func:`_word_start_spans`). A leading look-behind made the engine try every position of the
# text: five times the cost of the whole tokenizer call on wire articles (docs/experiments/datapath.md).
@functools.lru_cache(maxsize=65536)
def _symbol_pattern(ticker: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(ticker)}{_POSSESSIVE}(?!\w)")


@functools.lru_cache(maxsize=65536)
def _alias_pattern(alias: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(alias)}{_POSSESSIVE}(?!\w)", re.IGNORECASE)


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"  # what the regex \w matches in a str


def _word_start_spans(pattern: re.Pattern[str], text: str, cashtag: bool) -> list[tuple[int, int]]:
    r"""Spans of ``pattern``'s matches that start a word; with ``cashtag`` a "$" right before the match
    (itself at a word start) belongs to the span: ``(?<!\w)\$?PATTERN`` without the look-behind's scan."""
    spans = []
    for match in pattern.finditer(text):
        start, end = match.span()
        if start > 0:
            before = text[start - 1]
            if cashtag and before == "$" and (start == 1 or not _is_word(text[start - 2])):
                start -= 1
            elif _is_word(before):
                continue
        spans.append((start, end))
    return spans


def find_mentions(text: str, ticker: str, aliases: Sequence[str] = ()) -> list[tuple[int, int]]:
    """Character spans of every mention of ``ticker`` (as symbol, cashtag or alias) in ``text``.

    The symbol itself is matched case-sensitively (``AI`` the ticker is not "ai" the word); aliases are
    matched case-insensitively as whole words. Both may carry a possessive ("BABA's", "HULs"), which is
    part of the span. Overlapping spans are merged.
    """
    spans: list[tuple[int, int]] = []
    if ticker:
        spans += _word_start_spans(_symbol_pattern(ticker), text, cashtag=True)
    for alias in aliases:
        if alias and alias != ticker:
            spans += _word_start_spans(_alias_pattern(alias), text, cashtag=False)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


_WORD = re.compile(r"\w+")
_AFTER = re.compile(rf"{_POSSESSIVE}(?!\w)")


class NameMatcher:
    """Every name of a company-name map found in one pass over a text's words.

    Names are matched case-insensitively as whole words (with a possessive), longest first where two
    start at the same word, and never overlap. The names are indexed by their first word, so a text costs
    its word count in lookups whatever the size of the map (thousands of names: ``inference.ticker_names``).
    """

    def __init__(self, name_map: Mapping[str, str]):
        self.tickers = {name.lower(): ticker for name, ticker in name_map.items()}
        self.by_first: dict[str, list[str]] = {}
        for name in sorted(self.tickers, key=len, reverse=True):
            first = _WORD.search(name)
            if first is not None and first.start() == 0:
                self.by_first.setdefault(first.group(0), []).append(name)

    def find(self, text: str) -> list[tuple[int, str]]:
        """(start, ticker) of every name in ``text``."""
        return [(start, ticker) for start, _, ticker in self.matches(text)]

    def matches(self, text: str) -> list[tuple[int, str, str]]:
        """(start, name as in the map but lower-cased, ticker) of every name in ``text``."""
        if not self.by_first:  # no names to find (no ticker map): no pass over the words
            return []
        lower = text.lower()
        found, end = [], 0
        for word in _WORD.finditer(lower):
            if word.start() < end or (word.start() > 0 and lower[word.start() - 1].isalnum()):
                continue
            for name in self.by_first.get(word.group(0), ()):
                stop = word.start() + len(name)
                if lower.startswith(name, word.start()) and (after := _AFTER.match(lower, stop)):
                    found.append((word.start(), name, self.tickers[name]))
                    end = after.end()
                    break
        return found


def extract_tickers(text: str, name_map: Mapping[str, str] | NameMatcher | None = None) -> list[str]:
    """Tickers mentioned in ``text``: cashtags, exchange notations and names from ``name_map``.

    Returns symbols in order of first appearance, without duplicates.
    """
    found: list[tuple[int, str]] = []
    found += [(m.start(), m.group(1)) for m in _CASHTAG_RE.finditer(text)]
    found += [(m.start(), m.group(1)) for m in _EXCHANGE_RE.finditer(text)]
    if name_map:
        matcher = name_map if isinstance(name_map, NameMatcher) else NameMatcher(name_map)
        found += matcher.find(text)
    seen: dict[str, None] = {}
    for _, ticker in sorted(found):
        seen.setdefault(ticker, None)
    return list(seen)


def spans_to_tokens(
    offsets: Sequence[tuple[int, int]] | np.ndarray, spans: Iterable[tuple[int, int]]
) -> list[int]:
    """Indices of the tokens whose character offsets overlap any span (special tokens have (0, 0))."""
    spans = list(spans)
    if not spans:
        return []
    o = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    s = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    real = o[:, 1] > o[:, 0]
    hit = (o[:, 0:1] < s[None, :, 1]) & (o[:, 1:2] > s[None, :, 0])  # [tokens, spans]
    return np.flatnonzero(real & hit.any(1)).tolist()
