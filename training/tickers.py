"""Finding ticker mentions in text, shared by training (target sentiment) and scoring (extraction).

The model scores a ticker by pooling the token states of its mentions, so both sides need the same notion
of "where is this ticker mentioned": a cashtag (``$BABA``), the bare symbol as a word (``BABA``), an
exchange notation (``(NYSE: BABA)``) or one of its names (``Alibaba``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

_EXCHANGES = (
    r"NYSE(?:\s+American|\s+Arca)?|NASDAQ|Nasdaq|AMEX|LSE|TSX|TSXV|HKEX|SEHK|ASX|NSE|BSE|XETRA|Euronext|OTC"
)
_EXCHANGE_RE = re.compile(rf"\(\s*(?:{_EXCHANGES})\s*:\s*([A-Z][A-Z0-9]{{0,6}}(?:\.[A-Z]{{1,2}})?)\s*\)")
_CASHTAG_RE = re.compile(r"(?<![\w$])\$([A-Z][A-Z0-9]{0,5}(?:\.[A-Z]{1,2})?)\b")


# A possessive or plural directly after a name still mentions it: "Alibaba's", "HULs" (apostrophe lost).
_POSSESSIVE = r"(?:['\u2019]?s)?"


def _alias_pattern(alias: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(alias)}{_POSSESSIVE}(?!\w)", re.IGNORECASE)


def find_mentions(text: str, ticker: str, aliases: Sequence[str] = ()) -> list[tuple[int, int]]:
    """Character spans of every mention of ``ticker`` (as symbol, cashtag or alias) in ``text``.

    The symbol itself is matched case-sensitively (``AI`` the ticker is not "ai" the word); aliases are
    matched case-insensitively as whole words. Both may carry a possessive ("BABA's", "HULs"), which is
    part of the span. Overlapping spans are merged.
    """
    spans: list[tuple[int, int]] = []
    if ticker:
        symbol = re.compile(rf"(?<![\w]){re.escape('$')}?{re.escape(ticker)}{_POSSESSIVE}(?![\w])")
        spans += [m.span() for m in symbol.finditer(text)]
    for alias in aliases:
        if alias and alias != ticker:
            spans += [m.span() for m in _alias_pattern(alias).finditer(text)]
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def extract_tickers(text: str, name_map: Mapping[str, str] | None = None) -> list[str]:
    """Tickers mentioned in ``text``: cashtags, exchange notations and names from ``name_map``.

    Returns symbols in order of first appearance, without duplicates.
    """
    found: list[tuple[int, str]] = []
    found += [(m.start(), m.group(1)) for m in _CASHTAG_RE.finditer(text)]
    found += [(m.start(), m.group(1)) for m in _EXCHANGE_RE.finditer(text)]
    for name, ticker in (name_map or {}).items():
        match = _alias_pattern(name).search(text)
        if match:
            found.append((match.start(), ticker))
    seen: dict[str, None] = {}
    for _, ticker in sorted(found):
        seen.setdefault(ticker, None)
    return list(seen)


def spans_to_tokens(offsets: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int]]) -> list[int]:
    """Indices of the tokens whose character offsets overlap any span (special tokens have (0, 0))."""
    spans = list(spans)
    tokens = []
    for idx, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        if any(start < s_end and end > s_start for s_start, s_end in spans):
            tokens.append(idx)
    return tokens
