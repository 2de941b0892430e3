from hypothesis import given
from hypothesis import strategies as st

from training.tickers import extract_tickers, find_mentions, spans_to_tokens


def test_find_mentions_symbol_cashtag_and_alias():
    text = "Alibaba (NYSE: BABA) rose; $BABA holders cheered, alibaba said."
    spans = find_mentions(text, "BABA", ["Alibaba"])
    found = [text[s:e] for s, e in spans]
    assert found == ["Alibaba", "BABA", "$BABA", "alibaba"]


def test_symbol_is_case_sensitive_and_word_bounded():
    text = "AI stocks: the ai boom lifts AIR and AI."
    assert [text[s:e] for s, e in find_mentions(text, "AI")] == ["AI", "AI"]


def test_extract_tickers_in_order_without_duplicates():
    text = "Acme Corp (NASDAQ: ACME) beat; $GLBX fell and $ACME rose. Initech said nothing."
    assert extract_tickers(text, {"Initech": "INTC"}) == ["ACME", "GLBX", "INTC"]


def test_extract_handles_class_shares_and_ignores_prices():
    assert extract_tickers("$BRK.B gained while the $5 fee stayed") == ["BRK.B"]


def test_spans_to_tokens_skips_special_tokens():
    offsets = [(0, 0), (0, 4), (5, 9), (10, 12), (0, 0)]
    assert spans_to_tokens(offsets, [(5, 12)]) == [2, 3]


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_find_mentions_spans_point_at_the_symbol(prefix):
    text = prefix + " $ZZZQ "
    for start, end in find_mentions(text, "ZZZQ"):
        assert text[start:end].lstrip("$") == "ZZZQ"


def test_possessives_and_lost_apostrophes_are_mentions():
    # SEntFiN headlines drop apostrophes ("HULs modern trade"); wires keep them ("Alibaba's").
    text = "HULs margin; Alibaba's record; BABA\u2019s shares; HULLO is another word"
    spans = find_mentions(text, "HUL")
    assert [text[s:e] for s, e in spans] == ["HULs"]
    assert [text[s:e] for s, e in find_mentions(text, "BABA", ["Alibaba"])] == ["Alibaba's", "BABA\u2019s"]


def test_name_matcher_finds_whole_names_longest_first_in_one_pass():
    from training.tickers import NameMatcher, extract_tickers

    matcher = NameMatcher({"Bank of America": "BAC", "America": "X", "AT&T": "T", "Apple": "AAPL"})
    text = "Bank of America and AT&T's deal lifts Apple; pineapple and Americana do not count"
    assert extract_tickers(text, matcher) == ["BAC", "T", "AAPL"]
    assert [name for _, name, _ in matcher.matches(text)] == ["bank of america", "at&t", "apple"]
    assert extract_tickers("$ACME and Apple", {"Apple": "AAPL"}) == ["ACME", "AAPL"]


def test_packaged_ticker_maps_load_and_name_real_companies():
    from inference.prep import PACKAGED_TICKER_MAPS, load_ticker_map

    for name in PACKAGED_TICKER_MAPS:
        assert len(load_ticker_map(None, None, [name])) > 100
    both = load_ticker_map(None, {"Apple": "APPLE-OVERRIDE"}, ["us_stocknet"])
    assert both["Alibaba"] == "BABA" and both["Apple"] == "APPLE-OVERRIDE"  # inline entries win
    india = load_ticker_map(None, None, ["india_sentfin"])
    assert "Deepak" not in india and "CBI" not in india  # dropped on the dev headlines


def test_mentions_equal_the_look_behind_patterns_on_random_text():
    """find_mentions checks the word boundary before a candidate in Python (a leading look-behind made
    the regex scan every position); on random strings of the characters that matter it finds exactly the
    spans of the look-behind patterns it replaced."""
    import random
    import re

    from training.tickers import _POSSESSIVE, find_mentions

    def reference(text, ticker, aliases):
        spans = [
            m.span() for m in re.finditer(rf"(?<![\w])\$?{re.escape(ticker)}{_POSSESSIVE}(?![\w])", text)
        ]
        for alias in aliases:
            pattern = rf"(?<!\w){re.escape(alias)}{_POSSESSIVE}(?!\w)"
            spans += [m.span() for m in re.finditer(pattern, text, re.IGNORECASE)]
        merged = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    rng = random.Random(0)
    alphabet = "AB$ _.'s\u2019xa1é"
    cases = [("AB", ()), ("A", ()), ("B.A", ()), ("AB", ("ab x",)), ("A", ("b",))]
    checked = 0
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        for ticker, aliases in cases:
            assert find_mentions(text, ticker, aliases) == reference(text, ticker, aliases), (text, ticker)
            checked += bool(reference(text, ticker, aliases))
    assert checked > 1000  # the random texts do contain mentions
