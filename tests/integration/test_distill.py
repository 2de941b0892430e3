"""Distillation: an exported teacher scores the training rows (and text-only rows) with the batch scorer,
its part files are the cache, and the student's loss learns from them."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from tests.conftest import compose_train, tiny_overrides, write_jsonl
from training.distill import distill_losses, teacher_heads
from training.train import run as train_run

pytestmark = pytest.mark.slow


def test_kl_term_is_zero_when_the_student_matches_the_teacher_and_masks_rows_without_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    teacher = torch.softmax(logits, -1)
    teacher[2] = float("nan")  # a row the teacher did not score
    batch = {"teacher_probs": teacher}
    out = {"sentiment_logits": logits}
    for temperature in (1.0, 2.0):
        assert distill_losses(out, batch, temperature)["distill_sentiment"].abs() < 1e-6
    shifted = {"sentiment_logits": logits.flip(-1)}
    assert distill_losses(shifted, batch, 2.0)["distill_sentiment"] > 0.1


def test_regression_and_topic_terms_use_only_rows_with_targets():
    out = {
        "sentiment_logits": torch.zeros(2, 3),
        "sentiment_score": torch.tensor([0.5, -0.5]),
        "impact_logits": torch.tensor([0.0, 0.0]),
        "topic_logits": torch.zeros(2, 2),
    }
    batch = {
        "teacher_probs": torch.full((2, 1), float("nan")),
        "teacher_score": torch.tensor([0.25, float("nan")]),
        "teacher_impact": torch.tensor([float("nan"), 1.0]),
        "teacher_topics": torch.tensor([[1.0, 0.0], [float("nan"), float("nan")]]),
    }
    losses = distill_losses(out, batch, 2.0)
    assert "distill_sentiment" not in losses
    assert losses["distill_score"].item() == pytest.approx(0.0625)
    assert losses["distill_impact"].item() == pytest.approx(math.log(2))
    assert losses["distill_topics"].item() == pytest.approx(math.log(2))


def test_hidden_term_is_the_cosine_distance_of_the_mapped_student_state():
    projection = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    out = {"sentiment_logits": torch.zeros(2, 3), "pooled": torch.tensor([[1.0, 2.0], [3.0, -1.0]])}
    same = {"teacher_embedding": 5 * torch.tensor([[1.0, 2.0, 3.0], [3.0, -1.0, 2.0]])}  # scale is ignored
    assert distill_losses(out, same, 2.0, projection=projection)["distill_hidden"].abs() < 1e-6
    opposite = {"teacher_embedding": -same["teacher_embedding"]}
    assert distill_losses(out, opposite, 2.0, projection=projection)[
        "distill_hidden"
    ].item() == pytest.approx(2.0)
    assert "distill_hidden" not in distill_losses(out, same, 2.0)  # no projection: no hidden term


def test_teacher_heads_come_from_its_validation_metrics():
    meta = {"metrics": {"sentiment_f1_macro": 0.8, "loss": 1.0}}
    assert teacher_heads(meta, None) == ["sentiment"]
    meta = {
        "metrics": {"sentiment_acc": 1, "sentiment_score_mae": 0.1, "impact_mae": 0.2, "topics_f1_micro": 0.5}
    }
    assert teacher_heads(meta, None) == ["sentiment", "sentiment_score", "impact", "topics"]
    assert teacher_heads(meta, ["topics", "sentiment"]) == ["sentiment", "topics"]


def _losses(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["train/loss_distill_sentiment"]) for r in rows if r.get("train/loss_distill_sentiment")]


def test_student_trains_on_teacher_outputs_scored_once_and_cached(tiny_bert, exported, tmp_path):
    texts = tmp_path / "unlabelled"
    texts.mkdir()
    write_jsonl(
        texts / "train.jsonl",
        [{"text": f"$ACME shares {w} after results"} for w in ("rise", "fall", "hold", "soar", "slump") * 6],
    )
    cache = tmp_path / "cache"

    def overrides(run_dir):
        return tiny_overrides(tiny_bert, run_dir) + [
            f"distill.teacher={exported['merged']}",
            f"distill.cache_dir={cache}",
            "distill.heads=[sentiment,sentiment_score,impact,topics]",  # the 4-step teacher never validated
            f"+data.sources.unlabelled.root={texts}",
            "+data.sources.unlabelled.splits.train.path=train.jsonl",
            "+data.sources.unlabelled.columns.text=text",
            "trainer.max_steps=12",
            "trainer.max_epochs=-1",
            "optim.lr=5e-3",
        ]

    first = tmp_path / "student1"
    train_run(compose_train(overrides(first)), first)
    folders = list(cache.glob("*/*/_SUCCESS"))
    assert len(folders) == 2  # one per source's training texts: sample + unlabelled
    unlabelled = next(f.parent for f in folders if json.loads(f.read_text())["rows"] == 30)
    parts = sorted(unlabelled.glob("part-*.parquet"))
    assert parts
    stamps = [p.stat().st_mtime_ns for p in parts]
    losses = _losses(first)
    assert losses and all(math.isfinite(v) for v in losses)

    second = tmp_path / "student2"
    train_run(compose_train(overrides(second)), second)
    assert [p.stat().st_mtime_ns for p in sorted(unlabelled.glob("part-*.parquet"))] == stamps  # reused
    assert len(list(cache.glob("*/*/_SUCCESS"))) == 2
    info = json.loads((second / "run.json").read_text())
    assert info["config"]["distill"]["teacher"] == str(exported["merged"])


def test_a_teacher_on_another_scale_is_refused(tiny_bert, exported, tmp_path):
    from training.config import ConfigError
    from training.config_checks import validate_train_config

    config = compose_train(
        tiny_overrides(tiny_bert, tmp_path / "r")
        + [f"distill.teacher={exported['merged']}", "schema.sentiment_labels=[negative,neutral,positive]"]
    )
    with pytest.raises(ConfigError, match="distill.teacher's sentiment labels"):
        validate_train_config(config)


def test_hidden_states_are_scored_with_the_outputs_and_the_projection_is_not_exported(
    tiny_bert, exported, tmp_path
):
    import pyarrow.parquet as pq

    from training.export import ExportConfig, ExportOptions
    from training.export import run as export_run
    from training.modeling import load_trained

    cache = tmp_path / "cache"
    run_dir = tmp_path / "student"
    overrides = tiny_overrides(tiny_bert, run_dir) + [
        f"distill.teacher={exported['adapter']}",
        f"distill.cache_dir={cache}",
        "distill.heads=[sentiment]",
        "distill.hidden_weight=2.0",
        "trainer.max_steps=8",
        "trainer.max_epochs=-1",
    ]
    train_run(compose_train(overrides), run_dir)
    (folder,) = [f.parent for f in cache.glob("*/*/_SUCCESS")]
    assert folder.name.endswith("-emb")  # its own cache folder: outputs scored without embeddings stay valid
    table = pq.read_table(sorted(folder.glob("part-*.parquet")))
    teacher = load_trained(exported["adapter"])
    assert len(table.column("embedding")[0]) == teacher.heads["sentiment"].in_features
    with open(run_dir / "metrics.csv") as fh:
        hidden = [
            float(r["train/loss_distill_hidden"])
            for r in csv.DictReader(fh)
            if r.get("train/loss_distill_hidden")
        ]
    assert hidden and all(0 <= v <= 2 for v in hidden)
    ckpt = torch.load(next((run_dir / "checkpoints").glob("*.ckpt")), map_location="cpu", weights_only=False)
    assert any(k.startswith("distill_projection.") for k in ckpt["state_dict"])  # kept for resume
    out = export_run(
        ExportConfig(
            run_dir=str(run_dir), output_dir=str(tmp_path / "export"), export=ExportOptions(format="merged")
        )
    )
    model = load_trained(out)
    assert not any("projection" in name for name, _ in model.named_parameters())


def test_hidden_weight_is_checked_before_any_work(tiny_bert, exported, tmp_path):
    from training.config import ConfigError
    from training.config_checks import validate_train_config

    for teacher, value, message in (
        (exported["merged"], "-1", "distill.hidden_weight=-1.0 must be >= 0"),
        (exported["onnx"], "1", "is an ONNX export, whose graph has no pooled state"),
    ):
        config = compose_train(
            tiny_overrides(tiny_bert, tmp_path / "r")
            + [f"distill.teacher={teacher}", f"distill.hidden_weight={value}"]
        )
        with pytest.raises(ConfigError, match=message):
            validate_train_config(config)


def _another_teacher(exported, tmp_path):
    """A second teacher: the merged export with its sentiment head changed (other outputs, other identity)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from training.modeling import HEADS_FILE

    folder = tmp_path / "teacher_b"
    shutil.copytree(exported["merged"], folder)
    heads = load_file(str(folder / HEADS_FILE))
    heads["sentiment.weight"] = heads["sentiment.weight"].flip(0) * 3.0
    save_file(heads, str(folder / HEADS_FILE))
    return folder


def test_an_ensemble_of_teachers_averages_their_outputs_and_joins_their_states(tiny_bert, exported, tmp_path):
    import numpy as np

    from training.config import DistillConfig
    from training.teacher import Teacher

    other = _another_teacher(exported, tmp_path)
    cache = tmp_path / "cache"
    run_dir = tmp_path / "student"
    overrides = tiny_overrides(tiny_bert, run_dir) + [
        f"distill.teacher=[{exported['merged']},{other}]",
        f"distill.cache_dir={cache}",
        "distill.heads=[sentiment,sentiment_score]",
        "distill.hidden_weight=1.0",
        "trainer.max_steps=6",
        "trainer.max_epochs=-1",
    ]
    config = compose_train(overrides)
    train_run(config, run_dir)
    members = sorted(cache.glob("*/*/_SUCCESS"))
    assert len(members) == 2  # each member's outputs cached on their own: reused alone or in other ensembles
    ckpt = torch.load(next((run_dir / "checkpoints").glob("*.ckpt")), map_location="cpu", weights_only=False)
    width = ckpt["state_dict"]["distill_projection.weight"].shape[0]

    texts = [f"$ACME shares {w} after results" for w in ("rise", "fall", "hold")]
    labels = list(config.schema.sentiment_labels)

    def teacher(folders):
        distill = DistillConfig(
            teacher=folders,
            cache_dir=str(tmp_path / "cache2"),
            heads=["sentiment", "sentiment_score"],
            hidden_weight=1.0,
        )
        return Teacher(distill, list(config.schema.topics), labels)

    a, b = teacher(str(exported["merged"])), teacher(str(other))
    both = teacher([str(exported["merged"]), str(other)])
    assert both.width == width == a.width + b.width
    ta, tb, tboth = a.score(texts, "a"), b.score(texts, "b"), both.score(texts, "both")
    assert not np.allclose(ta["teacher_probs"], tb["teacher_probs"], atol=1e-3)  # two different teachers
    np.testing.assert_allclose(
        tboth["teacher_probs"], (ta["teacher_probs"] + tb["teacher_probs"]) / 2, atol=1e-6
    )
    np.testing.assert_allclose(
        tboth["teacher_score"], (ta["teacher_score"] + tb["teacher_score"]) / 2, atol=1e-6
    )
    unit = ta["teacher_embedding"] / np.linalg.norm(ta["teacher_embedding"], axis=-1, keepdims=True)
    np.testing.assert_allclose(tboth["teacher_embedding"][:, : a.width], unit, atol=1e-5)
    assert len(list((tmp_path / "cache2").glob("*/*/_SUCCESS"))) == 2  # the ensemble scored nothing again


def test_a_teacher_list_is_checked_member_by_member(tiny_bert, exported, tmp_path):
    from training.config import ConfigError
    from training.config_checks import validate_train_config

    for teacher, message in (
        (
            f"[{exported['merged']},{tmp_path / 'nowhere'}]",
            r"distill.teacher\[1\]='.*nowhere' is not an exported",
        ),
        ("[]", "name at least one exported model"),
        (f"[{{model_dir: {exported['merged']}, head: [topics]}}]", r"unknown key\(s\) \['head'\]"),
        (f"[{{model_dir: {exported['merged']}, heads: [score]}}]", r"distill.teacher.heads: 'score' is not"),
        ("[{heads: [topics]}]", "a member without model_dir"),
    ):
        config = compose_train(tiny_overrides(tiny_bert, tmp_path / "r") + [f"distill.teacher={teacher}"])
        with pytest.raises(ConfigError, match=message):
            validate_train_config(config)


def _teacher_of(exported, tmp_path, name, metrics, flip=False):
    """A copy of the merged export that reports validation ``metrics`` for some heads only (a teacher
    trained for one task), optionally with its sentiment and topic heads changed (other outputs)."""
    import shutil

    from safetensors.torch import load_file, save_file

    from training.modeling import HEADS_FILE

    folder = tmp_path / name
    shutil.copytree(exported["merged"], folder)
    meta = json.loads((folder / "newsimpact.json").read_text())
    meta["metrics"] = metrics
    (folder / "newsimpact.json").write_text(json.dumps(meta))
    if flip:
        heads = load_file(str(folder / HEADS_FILE))
        heads["sentiment.weight"] = heads["sentiment.weight"].flip(0) * 3.0
        heads["topics.weight"] = heads["topics.weight"] * -2.0
        save_file(heads, str(folder / HEADS_FILE))
    return folder


def test_teachers_per_task_each_teach_the_heads_they_were_trained_on(tiny_bert, exported, tmp_path):
    """distill.teacher=[A,B] with A validated on sentiment only and B on topics only: the student learns
    sentiment from A alone and topics from B alone (not their mean), and nothing for the heads neither
    knows; a real training run takes both."""
    import numpy as np

    from training.config import DistillConfig
    from training.teacher import Teacher

    a = _teacher_of(
        exported, tmp_path, "sentiment_teacher", {"sentiment_acc": 0.6, "sentiment_f1_macro": 0.5}
    )
    b = _teacher_of(exported, tmp_path, "topic_teacher", {"topics_f1_micro": 0.4}, flip=True)
    config = compose_train(tiny_overrides(tiny_bert, tmp_path / "r"))
    labels, topics = list(config.schema.sentiment_labels), list(config.schema.topics)

    def teacher(folders):
        return Teacher(DistillConfig(teacher=folders, cache_dir=str(tmp_path / "cache")), topics, labels)

    both = teacher([str(a), str(b)])
    assert both.member_heads == [["sentiment"], ["topics"]] and both.heads == ["sentiment", "topics"]
    texts = [f"$ACME shares {w} after results; AI chips and guidance" for w in ("rise", "fall", "hold")]
    ta, tb, tboth = (
        teacher(str(a)).score(texts, "a"),
        teacher(str(b)).score(texts, "b"),
        both.score(texts, "ab"),
    )
    assert not np.allclose(ta["teacher_probs"], tb["teacher_probs"], atol=1e-3)
    assert not np.allclose(ta["teacher_topics"], tb["teacher_topics"], atol=1e-3, equal_nan=True)
    np.testing.assert_allclose(tboth["teacher_probs"], ta["teacher_probs"], atol=1e-6)  # A's, not the mean
    np.testing.assert_allclose(tboth["teacher_topics"], tb["teacher_topics"], atol=1e-6, equal_nan=True)
    assert np.isnan(tboth["teacher_score"]).all() and np.isnan(tboth["teacher_impact"]).all()

    run_dir = tmp_path / "student"
    student = compose_train(
        tiny_overrides(tiny_bert, run_dir)
        + [f"distill.teacher=[{a},{b}]", f"distill.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=4"]
    )
    info = train_run(student, run_dir)
    assert info["status"] == "finished"
    logged = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "distill_sentiment" in logged and "distill_topics" in logged
    assert "distill_sentiment_score" not in logged and "distill_impact" not in logged


def test_a_member_names_its_heads_and_a_source_can_leave_the_teacher_out(tiny_bert, exported, tmp_path):
    """distill.teacher=[{model_dir: A, heads: [sentiment_score]}]: A, validated on sentiment, teaches the
    score only; a source with distill: false is not scored by the teacher, its rows carry no targets (the
    pooled-state pull included), and the run trains on finite losses."""
    from tests.conftest import REPO
    from training.config import DistillConfig
    from training.teacher import Teacher

    a = _teacher_of(
        exported, tmp_path, "sentiment_teacher", {"sentiment_acc": 0.6, "sentiment_f1_macro": 0.5}
    )
    member = f"{{model_dir: {a}, heads: [sentiment_score]}}"
    config = compose_train(tiny_overrides(tiny_bert, tmp_path / "r"))
    named = Teacher(
        DistillConfig(
            teacher=[{"model_dir": str(a), "heads": ["sentiment_score"]}], cache_dir=str(tmp_path / "c")
        ),
        list(config.schema.topics),
        list(config.schema.sentiment_labels),
    )
    assert named.member_heads == [["sentiment_score"]] and named.heads == ["sentiment_score"]

    sample = REPO / "data" / "sample"
    run_dir, cache = tmp_path / "student", tmp_path / "cache"
    plain = (
        f"{{root: {sample}, format: json, splits: {{train: {{path: train.jsonl}}}}, columns: {{text: text}}}}"
    )
    student = compose_train(
        tiny_overrides(tiny_bert, run_dir)
        + [
            f"+data.sources.plain={plain}",
            "+data.sources.sample.distill=false",
            f"distill.teacher=[{member}]",
            f"distill.cache_dir={cache}",
            "distill.hidden_weight=1.0",
            "trainer.max_steps=6",
            "trainer.max_epochs=-1",
        ]
    )
    info = train_run(student, run_dir)
    assert info["status"] == "finished"
    scored = [json.loads(p.read_text()) for p in cache.glob("*/*/_SUCCESS")]
    rows = sum(1 for line in (sample / "train.jsonl").read_text().splitlines() if line.strip())
    assert [s["rows"] for s in scored] == [rows]  # the text-only source alone, not the labelled one
    with open(run_dir / "metrics.csv") as fh:
        logged = list(csv.DictReader(fh))
    assert "train/loss_distill_score" in logged[0] and "train/loss_distill_hidden" in logged[0]
    assert "train/loss_distill_sentiment" not in logged[0]
    losses = [float(r["train/loss"]) for r in logged if r.get("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
