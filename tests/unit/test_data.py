import json
import math

import datasets
import pytest
import torch

from training.config import SchemaConfig, SourceConfig, SplitConfig
from training.data import IGNORE_INDEX, Collator, _weighted, encode
from training.sources import label_score, load_split, to_canonical

SCALE = ["strongly negative", "negative", "neutral", "positive", "strongly positive"]


@pytest.fixture()
def tokenizer(tiny_bert):
    from training.modeling import load_tokenizer

    return load_tokenizer(tiny_bert)


def _raw(rows):
    return datasets.Dataset.from_list(rows)


def test_label_map_and_masks():
    schema = SchemaConfig(sentiment_labels=SCALE, topics=["earnings", "m&a"])
    source = SourceConfig(
        columns={"text": "t", "sentiment": "lab", "topics": "top"},
        label_map={"Bearish": "negative", "Bullish": "positive"},
        topic_map={"Earnings": "earnings"},
    )
    ds = _raw([{"t": "a", "lab": "Bearish", "top": "Earnings"}, {"t": "b", "lab": None, "top": None}])
    out = to_canonical(ds, "s", source, schema)
    assert out["sentiment"] == ["negative", None]
    assert out["topics"] == [["earnings"], []]
    assert out["has_topics"] == [True, False]
    assert all(math.isnan(v) for v in out["sentiment_score"])


def test_unknown_label_names_the_source_and_the_fix():
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    source = SourceConfig(columns={"text": "t", "sentiment": "lab"})
    with pytest.raises(ValueError, match=r"data.sources.s.label_map"):
        to_canonical(_raw([{"t": "a", "lab": "Bearsh"}]), "s", source, schema)


def test_missing_column_is_named():
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    source = SourceConfig(columns={"text": "headline"})
    with pytest.raises(ValueError, match="headline"):
        to_canonical(_raw([{"t": "a"}]), "s", source, schema)


def test_empty_text_rows_are_dropped():
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    out = to_canonical(_raw([{"text": "  "}, {"text": "ok"}]), "s", SourceConfig(), schema)
    assert out["text"] == ["ok"]


def test_entity_label_becomes_scale_position():
    assert label_score("strongly negative", SCALE) == -1.0
    assert label_score("neutral", SCALE) == 0.0
    assert label_score("positive", SCALE) == 0.5
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    source = SourceConfig(columns={"text": "t", "ticker": "e", "ticker_sentiment": "l"})
    out = to_canonical(_raw([{"t": "Acme up", "e": "Acme", "l": "positive"}]), "s", source, schema)
    # every entity label of this source names a coarse class: a three-class source on five levels
    assert out["entities"][0] == [{"ticker": "Acme", "sentiment_score": 0.5, "aliases": [], "coarse": True}]
    fine = to_canonical(
        _raw(
            [
                {"t": "Acme up", "e": "Acme", "l": "positive"},
                {"t": "Acme soars", "e": "Acme", "l": "strongly positive"},
            ]
        ),
        "s",
        source,
        schema,
    )
    assert [e[0]["coarse"] for e in fine["entities"]] == [False, False]


def test_coarse_entity_labels_teach_their_class_span(tokenizer):
    """On five levels a three-class entity label "positive" is positive-or-strongly-positive: its target is
    the span [0.5, 1] of the score axis, measured in steps of the coarse axis (0.5); fine labels and
    continuous scores stay points in unit steps; on a three-label scale nothing changes."""
    source = SourceConfig(columns={"text": "t", "ticker": "e", "ticker_sentiment": "l"})
    rows = [
        {"t": "Acme up", "e": "Acme", "l": "positive"},
        {"t": "Acme flat", "e": "Acme", "l": "neutral"},
        {"t": "Acme down", "e": "Acme", "l": "negative"},
    ]
    five = SchemaConfig(sentiment_labels=SCALE, topics=[])
    enc = encode(to_canonical(_raw(rows), "s", source, five), tokenizer, five, 16)
    assert enc["entity_scores"] == [[0.5], [0.0], [-0.5]]
    # coarse labels count distances in steps of the coarse axis: neutral (0) to "positive" (0.5) is one
    assert enc["entity_bands"] == [[[0.5, 1.0, 0.5]], [[0.0, 0.0, 0.5]], [[-1.0, -0.5, 0.5]]]
    three = SchemaConfig(sentiment_labels=["negative", "neutral", "positive"], topics=[])
    enc3 = encode(to_canonical(_raw(rows), "s", source, three), tokenizer, three, 16)
    assert enc3["entity_bands"] == [[[1.0, 1.0, 1.0]], [[0.0, 0.0, 1.0]], [[-1.0, -1.0, 1.0]]]
    scored = SourceConfig(columns={"text": "t", "ticker": "e", "ticker_score": "v"})
    enc_s = encode(
        to_canonical(_raw([{"t": "Acme up", "e": "Acme", "v": 0.3}]), "s", scored, five), tokenizer, five, 16
    )
    assert enc_s["entity_bands"][0][0] == pytest.approx([0.3, 0.3, 1.0])
    batch = Collator(tokenizer.pad_token_id, n_topics=0)([enc[i] for i in range(3)])
    assert batch["entity_bands"].tolist() == [[[0.5, 1.0, 0.5]], [[0.0, 0.0, 0.5]], [[-1.0, -0.5, 0.5]]]
    # an encoding cached before bands had a unit reads as unit 1
    old = [{**enc[i], "entity_bands": [b[:2] for b in enc[i]["entity_bands"]]} for i in range(3)]
    assert Collator(tokenizer.pad_token_id, n_topics=0)(old)["entity_bands"][..., 2].tolist() == [[1.0]] * 3


def test_encode_finds_mention_tokens_and_masks_missing_labels(tokenizer):
    schema = SchemaConfig(sentiment_labels=SCALE, topics=["earnings", "m&a"])
    source = SourceConfig(
        columns={"text": "text", "sentiment": "s", "topics": "topics", "entities": "entities"}
    )
    rows = [
        {
            "text": "Acme Corp beats, $GLBX falls",
            "s": "positive",
            "topics": ["earnings"],
            "entities": [
                {"ticker": "ACME", "sentiment_score": 0.7, "aliases": ["Acme Corp"]},
                {"ticker": "GLBX", "sentiment_score": -0.6, "aliases": []},
                {"ticker": "NOPE", "sentiment_score": 0.1, "aliases": []},
            ],
        },
        {"text": "quiet day", "s": None, "topics": None, "entities": []},
    ]
    enc = encode(to_canonical(_raw(rows), "x", source, schema), tokenizer, schema, 32)
    first = enc[0]
    # every label of this source names a coarse class: "positive" teaches positive-or-strongly-positive
    assert first["sentiment_id"] == IGNORE_INDEX and first["sentiment_group"] == 2
    assert first["topic_targets"] == [1.0, 0.0]
    assert len(first["entity_tokens"]) == 2  # NOPE is not in the text
    tokens = tokenizer.convert_ids_to_tokens(first["input_ids"])
    assert "".join(tokens[i] for i in first["entity_tokens"][0]).replace("#", "") == "acmecorp"
    assert "glbx" in "".join(tokens[i] for i in first["entity_tokens"][1]).replace("#", "")
    assert enc[1]["sentiment_id"] == IGNORE_INDEX and enc[1]["topic_targets"] == []


def test_collator_pads_and_marks_missing_targets(tokenizer):
    collate = Collator(tokenizer.pad_token_id, n_topics=2)
    rows = [
        {
            "input_ids": [1, 2, 3],
            "attention_mask": [1, 1, 1],
            "sentiment_id": 2,
            "sentiment_score": 0.5,
            "impact": None,
            "topic_targets": [1.0, 0.0],
            "entity_tokens": [[1], [2]],
            "entity_scores": [0.1, -0.2],
        },
        {
            "input_ids": [1],
            "attention_mask": [1],
            "sentiment_id": -100,
            "sentiment_score": float("nan"),
            "impact": 0.3,
            "topic_targets": [],
            "entity_tokens": [],
            "entity_scores": [],
        },
    ]
    batch = collate(rows)
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"][1].tolist() == [1, 0, 0]
    assert batch["entity_mask"].shape == (2, 2, 3) and batch["entity_mask"][0, 1, 2]
    assert torch.isnan(batch["entity_scores"][1]).all() and torch.isnan(batch["topic_targets"][1]).all()
    assert torch.isnan(batch["impact"][0]) and batch["impact"][1] == pytest.approx(0.3)
    bucketed = Collator(tokenizer.pad_token_id, n_topics=2, pad_to_multiple_of=8)(rows)
    assert bucketed["input_ids"].shape == (2, 8) and bucketed["entity_mask"].shape == (2, 2, 8)
    assert bucketed["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (bucketed["input_ids"][:, 3:] == tokenizer.pad_token_id).all()


def test_weights_repeat_or_subsample():
    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    assert len(_weighted(ds, 2.0, 0)) == 20
    half = _weighted(ds, 0.5, 0)
    assert len(half) == 5 and len(set(half["x"])) == 5


def test_load_split_where_filter(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        "\n".join(json.dumps({"text": str(i), "hold": i % 2 == 0}) for i in range(6))
    )
    source = SourceConfig(root=str(tmp_path))
    ds = load_split(source, SplitConfig(path="d.jsonl", where={"hold": True}))
    assert ds["text"] == ["0", "2", "4"]
    with pytest.raises(ValueError, match="nothere"):
        load_split(source, SplitConfig(path="d.jsonl", where={"nothere": 1}))


def test_text_lines_gives_one_row_per_distinct_line(tmp_path):
    """A StockNet-style row (a day of tweets) becomes its tweets; repeats and retweets of a kept one go."""
    days = [
        {"text": "$AAPL beats\nRT @desk: $AAPL beats\n\n  iPhone sales up  ", "day": 1},
        {"text": "iPhone sales up\n$MSFT guides lower", "day": 2},
        {"text": None, "day": 3},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(d) for d in days))
    source = SourceConfig(root=str(tmp_path), text_lines=True)
    ds = load_split(source, SplitConfig(path="d.jsonl", where={"day": 2}))
    assert ds.column_names == ["text"] and ds["text"] == ["iPhone sales up", "$MSFT guides lower"]
    ds = load_split(source, SplitConfig(path="d.jsonl"))
    assert ds["text"] == ["$AAPL beats", "iPhone sales up", "$MSFT guides lower"]
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    canonical = to_canonical(ds, "s", source, schema)
    assert canonical["sentiment"] == [None] * 3 and canonical["text"] == ds["text"]


def test_impact_from_return_ranks_against_the_training_rows(tmp_path):
    import pandas as pd

    from training.sources import impact_calibration

    pd.DataFrame(
        {"text": [f"t{i}" for i in range(11)], "ret": [i / 100 - 0.05 for i in range(11)]}
    ).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": ["big", "none", "small"], "ret": [0.5, 0.0, -0.01]}).to_parquet(
        tmp_path / "val.parquet"
    )
    source = SourceConfig(
        root=str(tmp_path), splits={"train": SplitConfig("train.parquet"), "validation": SplitConfig("val.parquet")},
        impact_from_return="ret",
    )  # fmt: skip
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    out = to_canonical(
        load_split(source, source.splits["validation"]), "s", source, schema, impact_calibration(source)
    )
    big, none, small = out["impact"]
    assert big == 1.0 and none < small < big and none <= 0.1


def test_entity_table_gives_the_ticker_and_every_name(tmp_path, tokenizer):
    import pandas as pd

    from training.config import EntityTableConfig

    pd.DataFrame(
        {"symbol": ["INFY", "HDFCBANK"], "aliases": [["Infosys Ltd.", "Infosys"], ["HDFC Bank", "HDFC"]]}
    ).to_parquet(tmp_path / "entities.parquet")
    source = SourceConfig(
        root=str(tmp_path),
        columns={"text": "t", "ticker": "e", "ticker_sentiment": "l"},
        entity_table=EntityTableConfig(path="entities.parquet"),
    )
    schema = SchemaConfig(sentiment_labels=["negative", "neutral", "positive"], topics=[])
    rows = [
        {"t": "Infosys beats; INFY up", "e": "infosys", "l": "positive"},  # case-insensitive name
        {"t": "Acme falls", "e": "Acme", "l": "negative"},  # not in the table: kept as annotated
    ]
    out = to_canonical(_raw(rows), "s", source, schema)
    infy, acme = out["entities"][0][0], out["entities"][1][0]
    assert infy["ticker"] == "INFY" and set(infy["aliases"]) == {"infosys", "Infosys Ltd.", "Infosys"}
    assert acme == {"ticker": "Acme", "sentiment_score": -1.0, "aliases": [], "coarse": False}
    # Both the name and the symbol are pooled for the entity.
    enc = encode(out, tokenizer, schema, 32)
    tokens = tokenizer.convert_ids_to_tokens([enc[0]["input_ids"][i] for i in enc[0]["entity_tokens"][0]])
    assert "info" in "".join(tokens).lower() and len(tokens) >= 2


def test_entity_table_errors_name_the_key(tmp_path):
    from training.config import EntityTableConfig
    from training.sources import load_entity_table

    source = SourceConfig(root=str(tmp_path), entity_table=EntityTableConfig(path="e.jsonl", ticker="sym"))
    (tmp_path / "e.jsonl").write_text(json.dumps({"symbol": "X", "aliases": ["x"]}) + "\n")
    with pytest.raises(ValueError, match="entity_table: column 'sym'"):
        load_entity_table(source)


def test_encoder_applies_url_replacement_before_finding_mentions(tokenizer):
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    source = SourceConfig(columns={"text": "t", "ticker": "e", "ticker_sentiment": "l"})
    rows = [{"t": "News https://t.co/abcdefghij then ACME jumps", "e": "ACME", "l": "positive"}]
    plain = encode(to_canonical(_raw(rows), "s", source, schema), tokenizer, schema, 64)[0]
    replaced = encode(to_canonical(_raw(rows), "s", source, schema), tokenizer, schema, 64, "http")[0]
    assert len(replaced["input_ids"]) < len(plain["input_ids"])
    mention = [
        tokenizer.convert_ids_to_tokens(replaced["input_ids"][i]) for i in replaced["entity_tokens"][0]
    ]
    assert "".join(mention).replace("#", "").lower() == "acme"


def test_a_source_labels_only_the_topics_it_can_say(tokenizer):
    """TFN-style topic classes teach nothing about a topic they have no class for (NaN: no loss, no metric);
    label_counts then show that topic untaught."""
    from training.data import label_counts
    from training.sources import topic_scope

    schema = SchemaConfig(sentiment_labels=SCALE, topics=["earnings", "m&a", "ai"])
    mapped = SourceConfig(
        columns={"text": "t", "topics": "top"}, topic_map={"Earnings": "earnings", "M&A": "m&a"}
    )
    assert topic_scope(mapped, schema) == ["earnings", "m&a"]
    assert topic_scope(SourceConfig(columns={"text": "t", "topics": "top"}), schema) is None
    raw = _raw([{"t": "Acme beats", "top": "Earnings"}, {"t": "Acme buys Initech", "top": "M&A"}])
    canonical = to_canonical(raw, "s", mapped, schema)
    encoded = encode(canonical, tokenizer, schema, 32, topic_scope=topic_scope(mapped, schema))
    rows = encoded["topic_targets"]
    assert rows[0][:2] == [1.0, 0.0] and rows[1][:2] == [0.0, 1.0]
    assert math.isnan(rows[0][2]) and math.isnan(rows[1][2])
    counts = label_counts(encoded, schema)["topics"]
    assert counts["ai"] == {"rows": 0, "positive": 0} and counts["earnings"] == {"rows": 2, "positive": 1}


def test_weak_topic_rules():
    from training.weak_labels import label, split_of

    assert label("Nvidia beats on AI chip demand; raises Q3 revenue guidance") == ["ai", "guidance"]
    assert label("Alibaba's quarterly revenue rose 7 % as AI demand lifted its cloud unit") == [
        "ai",
        "earnings",
    ]
    assert label("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .") == ["earnings"]
    assert label("Karur Vysya Bank Q4 net profit jumps 15.2%") == ["earnings"]
    assert label("Acme opens a new plant in Ohio") == []
    assert label("Nvidia sees fourth-quarter revenue of about $20 billion") == ["guidance"]  # not results
    assert label("Toyota lifts annual profit forecast") == ["guidance"]
    assert label("Goldman raises its oil price forecast") == []  # a bank's forecast is not guidance
    assert label("IMF cuts its growth outlook") == [] and label("Acme under the guidance of its founder") == [
        "guidance"
    ]
    assert label("AI flight 101 delayed; Air India apologises") == []
    assert split_of("same text") == split_of("same text") and {split_of(str(i)) for i in range(200)} == {
        "train",
        "validation",
        "test",
    }


def test_sentiment_level_auto_reads_three_class_sources_as_coarse(tokenizer):
    from training.sources import sentiment_level

    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    source = SourceConfig(columns={"text": "t", "sentiment": "s"}, label_map={"Bullish": "positive"})
    three = _raw([{"t": "up", "s": "Bullish"}, {"t": "flat", "s": "neutral"}, {"t": "?", "s": None}])
    five = _raw([{"t": "up", "s": "positive"}, {"t": "soars", "s": "strongly positive"}])
    assert sentiment_level(three, source, schema) == "coarse"
    assert sentiment_level(five, source, schema) == "fine"
    assert (
        sentiment_level(three, SourceConfig(columns=source.columns, sentiment_level="fine"), schema) == "fine"
    )
    enc = encode(to_canonical(five, "f", source, schema), tokenizer, schema, 16)
    assert enc["sentiment_id"] == [3, 4] and enc["sentiment_group"] == [2, 2]  # fine "positive": not strong
    enc = encode(to_canonical(three, "c", source, schema), tokenizer, schema, 16)
    assert enc["sentiment_id"] == [IGNORE_INDEX, 2, IGNORE_INDEX] and enc["sentiment_group"] == [
        2,
        1,
        IGNORE_INDEX,
    ]


def test_sentiment_from_score_bins_the_score_and_keeps_labels_without_one(tokenizer):
    schema = SchemaConfig(sentiment_labels=SCALE, topics=[])
    source = SourceConfig(
        columns={"text": "t", "sentiment": "s", "sentiment_score": "v"}, sentiment_from_score=True
    )
    rows = [
        {"t": "a", "s": "positive", "v": 0.7},
        {"t": "b", "s": "positive", "v": 0.2},
        {"t": "c", "s": "negative", "v": None},
    ]
    out = to_canonical(_raw(rows), "q", source, schema)
    assert out["sentiment"] == ["strongly positive", "positive", "negative"]
    assert out["sentiment_coarse"] == [False, False, True]  # the unscored row keeps its coarse label
