"""Evaluate an exported model on a labelled split.

``python -m training.evaluate model_dir=DIR data=NAME split=test [output_dir=OUT]``

Writes ``metrics.json`` (the per-head metrics training logs, plus per-class precision/recall/F1, weighted
F1, MSE and R^2 so figures compare with published tables), prints them as a table and plots a confusion
matrix, a reliability diagram of the sentiment probabilities and predicted-vs-true scatters (PNG).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torchmetrics.functional import classification as tmc
from tqdm.auto import tqdm

from training import artifacts
from training.choices import Precision
from training.config import (
    ConfigError,
    DataConfig,
    SchemaConfig,
    entry_point,
    load_validated,
    register_schema,
)
from training.data import Collator, build_splits
from training.metrics import HeadMetrics
from training.modeling import META_FILE, NewsImpactModel, load_tokenizer, load_trained, read_meta
from training.packaged_models import model_dir_problem, resolve_model_dir
from training.records import head_outputs, untrained
from training.scale import Scale

log = logging.getLogger("newsimpact.evaluate")


@dataclass
class EvaluateConfig:
    model_dir: str = "???"  # an exported model folder, or a packaged model's name (card, card-large)
    split: str = "test"
    output_dir: str = "???"
    # data.eval_batch_size, pad_to_multiple_of and num_workers cut the batches; group_by_length sorts the
    # rows by length first (less padding; the metrics do not depend on the order); batch_size is training's
    data: DataConfig = field(default_factory=DataConfig)
    device: str = "auto"  # auto: the first CUDA GPU when there is one, else the CPU | cpu | cuda | cuda:N
    precision: Precision = Precision.auto  # auto: bf16 on a GPU, fp32 on the CPU (the figures in the docs)


register_schema("evaluate_schema", EvaluateConfig)


def validate_evaluate_config(config: EvaluateConfig) -> None:
    from training.config_checks import check_source as _check_source

    problems: list[str] = []
    if config.device not in ("auto", "cpu") and not config.device.startswith("cuda"):
        problems.append(f"device='{config.device}' must be auto, cpu, cuda or cuda:N")
    elif config.device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"device='{config.device}' but this machine has no CUDA GPU; use device=auto or cpu")
    config.model_dir = resolve_model_dir(config.model_dir)
    if not (Path(config.model_dir) / META_FILE).exists():
        problems.append(model_dir_problem(config.model_dir))
        raise ConfigError(problems)
    schema = SchemaConfig(**read_meta(config.model_dir)["schema"])
    for name, source in config.data.sources.items():
        _check_source(name, source, schema, problems)
        if config.split not in source.splits:
            problems.append(
                f"data.sources.{name} has no split '{config.split}' (has: {', '.join(source.splits)})"
            )
    if problems:
        raise ConfigError(problems)


def resolve_device(device: str, precision: str) -> tuple[torch.device, str]:
    """``device=auto``: the first CUDA GPU when there is one; ``precision=auto``: bf16 there, fp32 on CPU."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return dev, precision


def _autocast(device: torch.device, precision: str) -> Any:
    import contextlib

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def predict(
    model: NewsImpactModel, loader: DataLoader, device: torch.device | None = None, precision: str = "fp32"
) -> dict[str, torch.Tensor]:
    """Run the model over a labelled loader (on ``device``, in ``precision``); returns predictions and
    targets, concatenated on the CPU."""
    device = device or torch.device("cpu")
    keep: dict[str, list[torch.Tensor]] = {}
    for batch in tqdm(loader, desc="evaluate", unit="batch"):
        inputs = [
            batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "entity_mask")
        ]
        with _autocast(device, precision):
            raw = model(*inputs)
        out = {k: v.float().cpu() for k, v in head_outputs(raw).items()}
        items = {
            "sentiment_probs": out["sentiment_probs"],
            "sentiment_id": batch["sentiment_id"],
            "sentiment_group": batch["sentiment_group"],
            "sentiment_score_pred": out["sentiment_score"],
            "sentiment_score": batch["sentiment_score"],
            "impact_pred": out["impact"],
            "impact": batch["impact"],
            "topic_probs": out["topic_scores"],
            "topic_targets": batch["topic_targets"],
            "ticker_pred": out["ticker_score"].reshape(-1),
            "ticker_true": batch["entity_scores"].reshape(-1),
        }
        for key, value in items.items():
            keep.setdefault(key, []).append(value.float() if value.is_floating_point() else value)
    return {k: torch.cat(v) for k, v in keep.items()}


def _regression(pred: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    from torchmetrics.functional import (
        mean_absolute_error,
        mean_squared_error,
        pearson_corrcoef,
        r2_score,
        spearman_corrcoef,
    )

    mask = ~torch.isnan(true)
    pred, true = pred[mask], true[mask]
    if len(true) < 2:
        return {}
    return {
        "n": float(len(true)),
        "mae": float(mean_absolute_error(pred, true)),
        "mse": float(mean_squared_error(pred, true)),
        "r2": float(r2_score(pred, true)),
        "spearman": float(spearman_corrcoef(pred, true)),
        "pearson": float(pearson_corrcoef(pred, true)),
    }


def _graded_accuracy(pred: torch.Tensor, true: torch.Tensor, scale: Scale) -> dict[str, float]:
    """Accuracy and macro-F1 of a score head whose targets are labels on the scale (e.g. SEntFiN).

    Labels become scores at evenly spaced points of [-1, 1]; a prediction counts as the nearest point.
    Targets that are not on those points (continuous scores, e.g. FiQA) give no classification metrics. On a
    scale finer than its projection the comparison is between coarse classes (a three-class source's
    "positive" sits at the fine "positive" point; a prediction nearest "strongly positive" is positive too).
    """
    n_labels = len(scale.labels)
    mask = ~torch.isnan(true)
    pred, true = pred[mask], true[mask]
    grid = torch.linspace(-1.0, 1.0, n_labels)
    target = (true[:, None] - grid[None, :]).abs().argmin(1)
    if len(true) == 0 or not torch.allclose(grid[target], true, atol=1e-4):
        return {}
    guess = (pred[:, None] - grid[None, :]).abs().argmin(1)
    n = n_labels
    if scale.refines:
        group_of = torch.as_tensor(scale.group_of)
        target, guess, n = group_of[target], group_of[guess], len(scale.coarse)
    per_class = tmc.multiclass_f1_score(guess, target, n, average="none")
    return {
        "accuracy": float((guess == target).float().mean()),
        # over the labels the targets use (a 3-label source scored on a 5-level scale has 3)
        "f1_macro": float(per_class[target.unique()].mean()),
    }


def _classification(guess: torch.Tensor, target: torch.Tensor, names: list[str]) -> dict[str, Any]:
    n = len(names)
    present = sorted(set(target.tolist()) | set(guess.tolist()))
    precision = tmc.multiclass_precision(guess, target, n, average="none")
    recall = tmc.multiclass_recall(guess, target, n, average="none")
    f1 = tmc.multiclass_f1_score(guess, target, n, average="none")
    return {
        "n": len(target),
        "accuracy": float(tmc.multiclass_accuracy(guess, target, n, average="micro")),
        "f1_macro": float(tmc.multiclass_f1_score(guess, target, n, average="macro")),
        "f1_weighted": float(tmc.multiclass_f1_score(guess, target, n, average="weighted")),
        "per_class": {
            names[i]: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int((target == i).sum()),
            }
            for i in present
        },
    }


def compute_metrics(
    pred: dict[str, torch.Tensor],
    labels: list[str],
    topics: list[str],
    scale: Scale | None = None,
    taught: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every head's metrics on what the scorer emits (the card of training.scale.Scale: label, coarse class,
    banded score; ``taught``: the labels the scorer may say, as in ``Scale.card``). ``sentiment``: rows with a label of the scale; ``sentiment_coarse`` (scales finer than
    their projection): every labelled row, on the three classes."""
    scale = scale or Scale(labels)
    metrics: dict[str, Any] = {}
    label, group, banded = (
        torch.as_tensor(a)
        for a in scale.card(pred["sentiment_probs"].numpy(), pred["sentiment_score_pred"].numpy(), taught)
    )
    valid = pred["sentiment_id"] != -100
    if valid.any():
        metrics["sentiment"] = _classification(label[valid], pred["sentiment_id"][valid], labels)
    rows = pred["sentiment_group"] >= 0
    if scale.refines and rows.any():
        metrics["sentiment_coarse"] = _classification(
            group[rows], pred["sentiment_group"][rows], scale.coarse
        )
    pred = {
        **pred,
        "sentiment_score_head": pred["sentiment_score_pred"],
        "sentiment_score_pred": banded.float(),
    }
    for head, p_key, t_key in (
        ("sentiment_score", "sentiment_score_pred", "sentiment_score"),
        ("impact", "impact_pred", "impact"),
        ("tickers", "ticker_pred", "ticker_true"),
    ):
        reg = _regression(pred[p_key], pred[t_key])
        if reg:
            metrics[head] = reg
    head_only = _regression(pred["sentiment_score_head"], pred["sentiment_score"])
    if head_only:  # the score head's own value, before it is kept inside the label's band
        metrics["sentiment_score"].update({"head_mse": head_only["mse"], "head_r2": head_only["r2"]})
    if "tickers" in metrics:
        metrics["tickers"].update(_graded_accuracy(pred["ticker_pred"], pred["ticker_true"], scale))
    rows = ~torch.isnan(pred["topic_targets"]).all(dim=1)
    if rows.any() and topics:
        probs, raw = pred["topic_probs"][rows], pred["topic_targets"][rows]
        target = torch.nan_to_num(raw, nan=-1.0).long()  # -1: not labelled by the row's source
        n = len(topics)
        # Single-label sources (one topic per row) are also scored as classification: top-1 accuracy over
        # the topics the row's source labels.
        labelled_probs = probs.masked_fill(torch.isnan(raw), -1.0)
        top1 = float((target.gather(1, labelled_probs.argmax(1, keepdim=True)) == 1).float().mean())
        per_topic = tmc.multilabel_f1_score(probs, target, n, average="none", ignore_index=-1)
        metrics["topics"] = {
            "n": int(rows.sum()),
            "f1_micro": float(tmc.multilabel_f1_score(probs, target, n, average="micro", ignore_index=-1)),
            "f1_macro": float(tmc.multilabel_f1_score(probs, target, n, average="macro", ignore_index=-1)),
            "top1_accuracy": top1,
            # topics with at least one positive row in this split
            "f1_per_topic": {
                name: float(f1) for name, f1, pos in zip(topics, per_topic, (target == 1).sum(0)) if pos > 0
            },
        }
    return metrics


def training_style_metrics(
    model: NewsImpactModel, loader: DataLoader, device: torch.device | None = None, precision: str = "fp32"
) -> dict[str, float]:
    """The metrics exactly as the Lightning module logs them during validation (for cross-checks)."""
    device = device or torch.device("cpu")
    scale = Scale.of(model.schema)
    membership = torch.tensor(scale.membership, dtype=torch.float32) if scale.refines else None
    metrics = HeadMetrics(len(model.schema.sentiment_labels), len(model.schema.topics), membership).to(device)
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with _autocast(device, precision):
                out = model(batch["input_ids"], batch["attention_mask"], batch["entity_mask"])
            metrics.update({k: v.float() for k, v in out.items()}, batch)
    return metrics.compute()


def _save(fig: Any, path: Path) -> None:
    with artifacts.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def _confusion_plot(
    plt: Any, probs: torch.Tensor, target: torch.Tensor, labels: list[str], path: Path
) -> None:
    cm = tmc.multiclass_confusion_matrix(probs, target, len(labels)).numpy()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("sentiment confusion matrix")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _reliability_plot(plt: Any, probs: torch.Tensor, target: torch.Tensor, path: Path) -> None:
    conf, hit = probs.max(-1).values, (probs.argmax(-1) == target).float()
    edges = torch.linspace(0, 1, 11)
    centers, accs, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            centers.append(float(conf[sel].mean()))
            accs.append(float(hit[sel].mean()))
            counts.append(int(sel.sum()))
    ece = sum(c * abs(a - m) for m, a, c in zip(centers, accs, counts)) / max(1, sum(counts))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot(centers, accs, "o-")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot(pred: dict[str, torch.Tensor], labels: list[str], out: Path) -> list[str]:
    """The confusion matrix and reliability diagram of the sentiment head, and true-vs-predicted scatters
    of the score and impact heads, as PNGs in ``out``; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    valid = pred["sentiment_id"] != -100
    if valid.any():
        probs, target = pred["sentiment_probs"][valid], pred["sentiment_id"][valid]
        _confusion_plot(plt, probs, target, labels, out / "confusion_matrix.png")
        _reliability_plot(plt, probs, target, out / "reliability.png")
        written += ["confusion_matrix.png", "reliability.png"]
    for head, p_key, t_key in (
        ("sentiment_score", "sentiment_score_pred", "sentiment_score"),
        ("impact", "impact_pred", "impact"),
    ):
        mask = ~torch.isnan(pred[t_key])
        if mask.sum() < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(pred[t_key][mask].numpy(), pred[p_key][mask].numpy(), s=6, alpha=0.5)
        lo = -1 if head == "sentiment_score" else 0
        ax.plot([lo, 1], [lo, 1], "--", color="grey")
        ax.set_xlabel(f"true {head}")
        ax.set_ylabel(f"predicted {head}")
        fig.tight_layout()
        _save(fig, out / f"scatter_{head}.png")
        plt.close(fig)
        written.append(f"scatter_{head}.png")
    return written


def format_table(metrics: dict[str, Any]) -> str:
    lines = [f"{'head':<16} {'metric':<14} {'value':>8}", "-" * 40]
    for head, values in metrics.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, float | int) and not isinstance(value, bool):
                lines.append(
                    f"{head:<16} {key:<14} {value:>8.4f}"
                    if isinstance(value, float)
                    else f"{head:<16} {key:<14} {value:>8d}"
                )
        for label, row in values.get("per_class", {}).items():
            lines.append(
                f"{head:<16} {label[:14]:<14} P {row['precision']:.3f} R {row['recall']:.3f} F1 {row['f1']:.3f} n {row['support']}"
            )
    return "\n".join(lines)


def run(config: EvaluateConfig) -> dict[str, Any]:
    start = time.perf_counter()
    model = load_trained(config.model_dir)
    meta = read_meta(config.model_dir)
    schema = SchemaConfig(**meta["schema"])
    tokenizer = load_tokenizer(config.model_dir)
    ds = build_splits(
        config.data,
        schema,
        tokenizer,
        meta["max_length"],
        only=[config.split],
        calibrations=meta.get("impact_calibration"),
        replace_urls=meta.get("replace_urls"),
    )[config.split]
    if config.data.group_by_length:
        lengths = [len(ids) for ids in ds["input_ids"]]
        ds = ds.select(sorted(range(len(ds)), key=lambda i: -lengths[i]))
    loader = DataLoader(
        ds,  # type: ignore[arg-type]
        batch_size=config.data.eval_batch_size,
        num_workers=config.data.num_workers,
        collate_fn=Collator(tokenizer.pad_token_id, len(schema.topics), config.data.pad_to_multiple_of),
    )
    device, precision = resolve_device(config.device, config.precision)
    model.to(device).eval()
    pred = predict(model, loader, device, precision)
    scale = Scale.of(schema)
    missing = untrained(meta.get("label_counts"), scale)["sentiment"]
    taught = np.array([label not in missing for label in schema.sentiment_labels])
    metrics = compute_metrics(pred, schema.sentiment_labels, schema.topics, scale, taught)
    metrics["training_style"] = training_style_metrics(model, loader, device, precision)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics["plots"] = plot(pred, schema.sentiment_labels, out)
    metrics["meta"] = {
        "model_dir": str(Path(config.model_dir).resolve()),
        "sources": list(config.data.sources),
        "split": config.split,
        "device": str(device),
        "precision": precision,
        "rows": len(ds),
        "seconds": round(time.perf_counter() - start, 1),
    }
    artifacts.write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    print(format_table(metrics))
    print(f"newsimpact: {len(ds)} rows evaluated; metrics.json and plots in {out}")
    return metrics


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    config, _ = load_validated(cfg, EvaluateConfig, validate_evaluate_config)
    run(config)


if __name__ == "__main__":
    main()
