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
