"""The five-level scale learned from a three-class source and a source with intensity (issue 16): training
counts both kinds of rows, every scored card agrees with itself, evaluation reports both scales, and a
model without intensity rows never emits a strong level."""

import json
import shutil

import pytest

from inference.engine import Scorer
from inference.prep import Article
from tests.conftest import compose_train, tiny_overrides, write_jsonl
from training.evaluate import EvaluateConfig
from training.evaluate import run as evaluate
from training.export import ExportConfig
from training.export import run as export
from training.scale import Scale
from training.train import run as train

PHRASES = {  # wording -> score of the intensity source
    "shares soar to a record after blowout results": 0.9,
    "shares edge up after results": 0.3,
    "shares hold steady after results": 0.0,
    "shares slip after results": -0.3,
    "shares collapse after a disastrous quarter": -0.9,
}


@pytest.fixture(scope="module")
def five_level_model(tiny_bert, tmp_path_factory):
    root = tmp_path_factory.mktemp("five")
    three, intense = root / "three", root / "intense"
    three.mkdir()
    intense.mkdir()
    coarse = {0.9: "positive", 0.3: "positive", 0.0: "neutral", -0.3: "negative", -0.9: "negative"}
    rows3 = [{"text": f"${t} {p}", "label": coarse[s]} for t in ("ACME", "GLBX") for p, s in PHRASES.items()]
    rows5 = [{"text": f"{t} {p}", "score": s} for t in ("Initech", "Umbrella") for p, s in PHRASES.items()]
    for folder, rows in ((three, rows3), (intense, rows5)):
        write_jsonl(folder / "train.jsonl", rows * 3)
        write_jsonl(folder / "validation.jsonl", rows)
    run_dir = root / "run"
    splits = "{train: {path: train.jsonl}, validation: {path: validation.jsonl}}"
    overrides = tiny_overrides(tiny_bert, run_dir) + [
        "data=sample",
        "~data.sources.sample",
        f"+data.sources.three={{root: {three}, splits: {splits}, columns: {{text: text, sentiment: label}}}}",
        f"+data.sources.intense={{root: {intense}, splits: {splits}, "
        "columns: {text: text, sentiment_score: score}, sentiment_from_score: true}",
        "trainer.max_steps=12",
        "trainer.max_epochs=-1",
    ]
    info = train(compose_train(overrides), run_dir)
    model = export(ExportConfig(run_dir=str(run_dir), output_dir=str(root / "model")))
    return {"info": info, "model": model, "three": three, "intense": intense, "root": root}


def test_training_counts_fine_and_coarse_rows(five_level_model):
    counts = five_level_model["info"]["label_counts"]
    # 30 intensity rows by band: 6 each; 30 three-class rows: 12 positive, 6 neutral, 12 negative, where
    # neutral (a coarse class of one label) is the fine label as well
    assert counts["sentiment"] == {
        "strongly negative": 6, "negative": 6, "neutral": 12, "positive": 6, "strongly positive": 6
    }  # fmt: skip
    assert counts["sentiment_coarse"] == {"negative": 12, "neutral": 0, "positive": 12}
    assert counts["heads"]["sentiment"] == 60 and counts["heads"]["sentiment_score"] == 30
    assert counts["heads"]["impact"] == 0 and counts["heads"]["tickers"] == 0  # NaN targets are not rows
    val = five_level_model["info"]["val_metrics"]
    assert "sentiment_coarse_f1_macro" in val and "sentiment_f1_macro" in val


def test_every_card_agrees_with_itself(five_level_model):
    meta = json.loads((five_level_model["model"] / "newsimpact.json").read_text())
    assert meta["schema"]["score_cuts"] == [-0.5, -0.1, 0.1, 0.5]
    scale = Scale.of(meta["schema"])
    texts = [f"{t} {p}" for t in ("Acme", "Hooli", "Stark") for p in PHRASES] + ["x" * 2000]
    records = Scorer(str(five_level_model["model"]), max_chunks=4).score(
        [Article(str(i), t) for i, t in enumerate(texts)]
    )
    for record in records:
        k = scale.labels.index(record["sentiment"])
        assert record["sentiment_coarse"] == scale.coarse[scale.group_of[k]]
        lo, hi = scale.bands[k]
        assert lo <= record["sentiment_score"] <= hi
        assert record["impact"] is None  # no row taught impact
        coarse = scale.coarse_probs(record["sentiment_probs"])
        assert coarse[scale.coarse.index(record["sentiment_coarse"])] == pytest.approx(coarse.max())


def test_a_model_without_intensity_rows_never_says_strongly(five_level_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(five_level_model["model"], model)
    meta = json.loads((model / "newsimpact.json").read_text())
    counts = meta["label_counts"]
    counts["sentiment"] = dict.fromkeys(counts["sentiment"], 0)  # as if trained on three-class rows only
    counts["sentiment_coarse"] = {"negative": 12, "neutral": 6, "positive": 12}
    counts["heads"]["sentiment_score"] = 0
    (model / "newsimpact.json").write_text(json.dumps(meta))
    articles = [Article(str(i), p) for i, p in enumerate(PHRASES)]
    before = Scorer(str(five_level_model["model"])).score(articles)
    after = Scorer(str(model)).score(articles)
    scale = Scale(meta["schema"]["sentiment_labels"])
    for b, a in zip(before, after):
        assert (
            a["sentiment"] in ("negative", "neutral", "positive") and a["sentiment_coarse"] == a["sentiment"]
        )
        assert a["sentiment_probs"][0] == 0 and a["sentiment_probs"][4] == 0
        # the mass of the strong levels moved inside their coarse class: the projection is unchanged
        assert scale.coarse_probs(a["sentiment_probs"]) == pytest.approx(
            scale.coarse_probs(b["sentiment_probs"])
        )
        # no row taught the score head: the score is p(positive) - p(negative) on the scale, kept in the band
        p = a["sentiment_probs"]
        lo, hi = scale.bands[scale.labels.index(a["sentiment"])]
        assert a["sentiment_score"] == pytest.approx(min(max(0.5 * (p[3] - p[1]), lo), hi))


def _evaluate_on(model: dict, name: str, source: dict, out) -> dict:
    """Evaluate the five-level model on the validation file of one of its two training sources."""
    sources = {
        name: {"root": str(model[name]), "splits": {"validation": {"path": "validation.jsonl"}}, **source}
    }
    data = compose_train(["data=sample"]).data.__class__(sources=sources)
    return evaluate(
        EvaluateConfig(model_dir=str(model["model"]), split="validation", output_dir=str(out), data=data)
    )


def test_evaluation_reports_five_levels_and_three_classes(five_level_model, tmp_path):
    columns = {"text": "text", "sentiment": "label"}
    three = _evaluate_on(five_level_model, "three", {"columns": columns}, tmp_path / "three")
    assert three["sentiment"]["n"] == 2  # only the neutral rows name a label of the scale itself
    assert three["sentiment_coarse"]["n"] == 10 and set(three["sentiment_coarse"]["per_class"]) <= {
        "negative", "neutral", "positive"
    }  # fmt: skip
    intense = {"columns": {"text": "text", "sentiment_score": "score"}, "sentiment_from_score": True}
    five = _evaluate_on(five_level_model, "intense", intense, tmp_path / "five")
    assert five["sentiment"]["n"] == 10 and five["sentiment_coarse"]["n"] == 10
    assert {"head_mse", "head_r2", "mse"} <= set(five["sentiment_score"])
