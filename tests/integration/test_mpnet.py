"""MPNet wherever a model goes: LoRA and full fine-tuning, every export format, the scorer, evaluation.

A tiny random MPNet (relative position bias, its own eager attention) built in-process; the real
all-mpnet-base-v2 weights are never needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engine import Scorer
from inference.prep import Article
from inference.runner import configure_process
from tests.conftest import REPO, compose_train, tiny_overrides
from training.export import ExportConfig, ExportOptions
from training.export import run as export_run
from training.train import run as train_run

pytestmark = pytest.mark.slow


def _articles(n: int = 24) -> list[Article]:
    rows = [json.loads(line) for line in (REPO / "data/sample/validation.jsonl").read_text().splitlines()]
    return [Article(r["id"], r["text"]) for r in (rows * 3)[:n]]


@pytest.fixture(scope="module")
def mpnet_run(tiny_mpnet, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("mpnet") / "lora"
    config = compose_train(
        tiny_overrides(tiny_mpnet, run_dir) + ["trainer.max_steps=3", "trainer.max_epochs=-1"]
    )
    assert config.peft.target_modules == "all-linear"
    train_run(config, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def mpnet_exports(mpnet_run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mpnet_exports")
    return {
        fmt: export_run(
            ExportConfig(
                run_dir=str(mpnet_run),
                output_dir=str(root / fmt),
                export=ExportOptions(format=fmt, quantize="int8" if fmt == "onnx" else None),
            )
        )
        for fmt in ("merged", "adapter", "onnx")
    }


def test_lora_covers_every_linear_layer_of_mpnet(mpnet_run):
    config = json.loads((mpnet_run / "adapter" / "backbone" / "adapter_config.json").read_text())
    leaves = {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    assert {"q", "k", "v", "o", "dense"} <= leaves


def test_full_fine_tuning_of_mpnet_changes_the_backbone(tiny_mpnet, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "full"
    config = compose_train(
        [o for o in tiny_overrides(tiny_mpnet, run_dir) if not o.startswith("peft.")]
        + ["peft=none", "trainer.max_steps=2", "trainer.max_epochs=-1"]
    )
    train_run(config, run_dir)
    before = load_file(str(Path(tiny_mpnet) / "model.safetensors"))
    after = load_file(str(run_dir / "adapter" / "backbone" / "model.safetensors"))
    key = next(k for k in after if k.endswith("attn.q.weight"))
    assert not torch.equal(before[key], after[key])


def test_merged_mpnet_loads_with_automodel_and_formats_agree(mpnet_exports):
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(mpnet_exports["merged"])
    assert type(backbone).__name__ == "MPNetModel"
    articles = _articles()
    results = {}
    for fmt, folder in mpnet_exports.items():
        records = Scorer(str(folder), max_chunks=4).score(articles)
        results[fmt] = np.array([r["sentiment_probs"] + [r["sentiment_score"], r["impact"]] for r in records])
    assert np.abs(results["merged"] - results["adapter"]).max() < 1e-4
    assert np.abs(results["merged"] - results["onnx"]).max() < 1e-3


def test_int8_onnx_mpnet_runs_with_onnxruntime(mpnet_exports):
    import onnxruntime as ort

    folder = mpnet_exports["onnx"]
    session = ort.InferenceSession(str(folder / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[101, 2000, 2001, 102, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    probs = session.run(
        None, {"input_ids": ids, "attention_mask": mask, "entity_mask": np.zeros((1, 1, 6), bool)}
    )[0]
    assert probs.shape[0] == 1 and abs(float(probs.sum()) - 1.0) < 1e-4


def test_scorer_keeps_mpnet_attention_and_matches_the_reference(mpnet_exports):
    """The CPU bf16 path cannot take over MPNet's attention (relative position bias): it falls back to the
    model's own, and its outputs match a plain forward pass of the reference model."""
    from training.modeling import load_trained

    folder = mpnet_exports["merged"]
    articles = _articles(8)
    configure_process()  # registers the bmm attention, as the entry points do
    scorer = Scorer(str(folder), precision="bf16", attention="bmm", max_chunks=1)
    assert scorer.runner.attention == "eager"
    bf16 = np.array([r["sentiment_probs"] for r in scorer.score(articles)])
    fp32 = np.array([r["sentiment_probs"] for r in Scorer(str(folder), max_chunks=1).score(articles)])
    reference = load_trained(folder)
    tok = scorer.tokenizer(
        [a.text for a in articles], truncation=True, max_length=48, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = reference(tok["input_ids"], tok["attention_mask"])["sentiment_logits"]
    expected = torch.softmax(logits, -1).numpy()
    assert np.abs(fp32 - expected).max() < 1e-5
    assert np.abs(bf16 - expected).max() < 0.03  # bf16 weights and activations


def test_evaluate_reads_an_mpnet_export(mpnet_exports, tmp_path):
    from training.evaluate import EvaluateConfig, run

    config = EvaluateConfig(
        model_dir=str(mpnet_exports["merged"]),
        split="validation",
        output_dir=str(tmp_path / "eval"),
        data=compose_train([]).data,  # data=sample
    )
    metrics = run(config)
    assert metrics["meta"]["rows"] > 0 and (tmp_path / "eval" / "metrics.json").is_file()
    assert 0.0 <= metrics["sentiment"]["accuracy"] <= 1.0
