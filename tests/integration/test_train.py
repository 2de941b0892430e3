import csv
import json

import pytest
import torch

from tests.conftest import compose_train, tiny_overrides
from training.config_checks import validate_train_config
from training.train import run


def _metrics(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def _train_losses(rows):
    return [float(r["train/loss_sentiment"]) for r in rows if r.get("train/loss_sentiment")]


def test_learns_a_separable_set_and_writes_the_run(tiny_bert, separable_data, tmp_path):
    run_dir = tmp_path / "run"
    config = compose_train(
        tiny_overrides(tiny_bert, run_dir, separable_data)
        + ["trainer.max_epochs=20", "optim.lr=5e-3", "optim.head_lr=1e-2", "peft.r=8", "optim.warmup_ratio=0"]
    )
    validate_train_config(config)
    info = run(config, run_dir)

    losses = _train_losses(_metrics(run_dir))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    # positive/negative rows name coarse classes of the five-level scale: the three-class figures
    assert "sentiment_acc" not in info["val_metrics"]
    assert info["val_metrics"]["sentiment_coarse_acc"] >= 0.75  # 8 held-out rows; chance is 0.5
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["status"] == "finished" and saved["schema"]["sentiment_labels"][0] == "strongly negative"
    assert saved["config"]["peft"]["r"] == 8 and saved["config_hash"]
    assert (run_dir / "adapter" / "heads.safetensors").exists()
    assert (run_dir / "adapter" / "backbone" / "adapter_config.json").exists()

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k or ".heads." in k for k in keys)


def test_resume_continues_the_step_count(tiny_bert, tmp_path):
    run_dir = tmp_path / "run"
    base = tiny_overrides(tiny_bert, run_dir) + ["checkpoint.every_n_train_steps=4", "trainer.max_epochs=-1"]
    first = run(compose_train(base + ["trainer.max_steps=8"]), run_dir)
    assert first["global_step"] == 8
    config = compose_train(base + ["trainer.max_steps=14", "resume=true"])
    validate_train_config(config)
    second = run(config, run_dir)
    assert second["global_step"] == 14 and second["resumed_from"].endswith("last.ckpt")
    steps = [int(r["step"]) for r in _metrics(run_dir) if r.get("train/loss")]
    assert steps == sorted(steps) and max(steps) == 13 and min(steps) == 0
    assert len(steps) == len(set(steps)), "resumed run must not log the first steps again"


@pytest.mark.slow
def test_tiny_llama_trains(tiny_llama, tmp_path):
    run_dir = tmp_path / "run"
    info = run(compose_train(tiny_overrides(tiny_llama, run_dir) + ["trainer.max_steps=6"]), run_dir)
    assert info["pooling"] == "last" and info["global_step"] == 6
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_impact_rank_table_travels_with_the_run(tiny_bert, tmp_path):
    """impact_from_return: the |return| -> impact table is saved with the run and reused by evaluation."""
    import pandas as pd

    from training.data import build_splits
    from training.modeling import load_tokenizer, read_meta

    data = tmp_path / "data"
    data.mkdir()
    returns = [i / 100 - 0.2 for i in range(40)]
    pd.DataFrame({"text": [f"$ACME day {i} moves" for i in range(40)], "ret": returns}).to_parquet(
        data / "train.parquet"
    )
    pd.DataFrame({"text": ["$ACME big", "$ACME flat"], "ret": [0.15, 0.0]}).to_parquet(data / "val.parquet")
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_bert, run_dir) + [
        "data=sample", "~data.sources.sample",
        f"+data.sources.prices={{root: {data}, splits: {{train: {{path: train.parquet}}, validation: {{path: val.parquet}}}}, "
        "columns: {text: text}, impact_from_return: ret}",
        "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.val_check_interval=2",
        "checkpoint.monitor=val/impact_spearman",
    ]  # fmt: skip
    config = compose_train(overrides)
    validate_train_config(config)
    info = run(config, run_dir)
    table = info["impact_calibration"]["prices"]
    assert read_meta(run_dir / "adapter")["impact_calibration"]["prices"] == table
    assert info["best_score"] == info["val_history"][0]["impact_spearman"]
    # The selection checkpoint holds the weights of the validation that chose it (step 2), not a later step's.
    assert info["best_checkpoint"].endswith("best-step2.ckpt")

    # Later the training file changes (new rows); evaluation must still map returns as training did.
    pd.DataFrame({"text": ["x"] * 4, "ret": [0.0, 0.01, 0.02, 0.5]}).to_parquet(data / "train.parquet")
    tokenizer = load_tokenizer(tiny_bert)
    saved = build_splits(config.data, config.schema, tokenizer, 48, ["validation"], {"prices": table})
    fresh = build_splits(config.data, config.schema, tokenizer, 48, ["validation"])
    assert saved["validation"]["impact"] != fresh["validation"]["impact"]
    big, flat = saved["validation"]["impact"]
    assert big == pytest.approx(0.775, abs=0.03) and flat == 0.0  # |0.15| vs |returns| of the 40 rows


def test_data_module_applies_the_model_url_replacement(tiny_bert, tmp_path):
    from tests.conftest import write_jsonl
    from training.config import DataConfig, SchemaConfig, SourceConfig, SplitConfig
    from training.modeling import load_tokenizer
    from training.module import NewsDataModule

    rows = [{"text": "ACME cuts guidance https://t.co/bd0xbFGjkT", "sentiment": "negative"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    source = SourceConfig(root=str(tmp_path), splits={"train": SplitConfig("train.jsonl")},
                          columns={"text": "text", "sentiment": "sentiment"})  # fmt: skip
    data = DataConfig(sources={"s": source})
    tokenizer = load_tokenizer(tiny_bert)
    lengths = {}
    for replace in (None, "http"):
        module = NewsDataModule(data, SchemaConfig(), tokenizer, 64, replace_urls=replace)
        module.setup("fit")
        lengths[replace] = len(module.splits["train"][0]["input_ids"])
    assert lengths["http"] < lengths[None] - 5


def test_ema_run_exports_the_average_and_resumes(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    base = tiny_overrides(tiny_bert, run_dir) + [
        "checkpoint.every_n_train_steps=4",
        "trainer.max_epochs=-1",
        "optim.ema_decay=0.9",
        "optim.lr=5e-3",
    ]
    config = compose_train(base + ["trainer.max_steps=8"])
    validate_train_config(config)
    run(config, run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    average, raw = ckpt["state_dict"], ckpt["raw_state_dict"]
    assert average.keys() == raw.keys()
    assert any(not torch.equal(average[k], raw[k]) for k in average)
    heads = load_file(str(run_dir / "adapter" / "heads.safetensors"))
    for name, value in heads.items():
        # the run's adapter is the average
        assert torch.allclose(value, average[f"model.heads.{name}"].float())
    second = run(compose_train(base + ["trainer.max_steps=12", "resume=true"]), run_dir)
    assert second["global_step"] == 12
    assert "raw_state_dict" in torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def test_every_training_step_runs_in_train_mode(tiny_bert, tmp_path, monkeypatch):
    """The backbone comes from from_pretrained in eval mode; its dropout must still run in training, also
    after a validation pass (the old behaviour: it silently stayed in eval mode)."""
    from training.module import NewsImpactModule

    modes: list[bool] = []
    step = NewsImpactModule.training_step

    def recording_step(self, batch, batch_idx):
        modes.append(all(m.training for m in self.model.modules()))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(NewsImpactModule, "training_step", recording_step)
    run_dir = tmp_path / "run"
    overrides = ["trainer.max_epochs=2", "model.backbone_dropout=0.2"]
    info = run(compose_train(tiny_overrides(tiny_bert, run_dir) + overrides), run_dir)
    assert info["val_history"] and len(info["val_history"]) >= 1  # validation ran between the epochs
    assert len(modes) == info["global_step"] >= 2 and all(modes)


def test_class_weights_come_from_the_set_up_data_module_and_run_json_has_throughput(
    tiny_bert, tmp_path, monkeypatch
):
    """loss.sentiment_class_weights is computed in the module's setup, from the data module Lightning has
    set up (so DDP ranks read rank 0's datasets cache instead of all building it before the Trainer
    exists); run.json records the device and steady step rate."""
    import training.train as train_module
    from training.losses import balanced_class_weights

    seen = []

    class Recording(train_module.NewsImpactModule):
        def on_fit_start(self):
            seen.append((self.class_weights.clone(), self.trainer.datamodule))
            super().on_fit_start()

    monkeypatch.setattr(train_module, "NewsImpactModule", Recording)
    run_dir = tmp_path / "run"
    config = compose_train(
        tiny_overrides(tiny_bert, run_dir)
        + ["trainer.max_steps=14", "trainer.max_epochs=-1", "loss.sentiment_class_weights=balanced"]
    )
    info = run(config, run_dir)
    ((weights, datamodule),) = seen
    labels = torch.tensor(datamodule.splits["train"]["sentiment_id"])
    assert torch.allclose(weights, balanced_class_weights(labels, len(config.schema.sentiment_labels)))
    assert not torch.allclose(weights, torch.ones_like(weights))
    assert info["throughput"]["device"] == "cpu" and info["throughput"]["steady_steps_per_s"] > 0
