"""Fine-tune a newsimpact model: ``python -m training.train [overrides]``.

``main`` is the only function that sees Hydra; ``run(config, run_dir)`` is the recipe and what tests call.
A run directory holds ``checkpoints/`` (adapter + heads only; ``last.ckpt`` for ``resume=true``),
``adapter/`` (the final weights for export), ``run.json`` and ``metrics.csv``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from training.config import TrainConfig, entry_point, load_validated
from training.config_checks import validate_train_config
from training.data import training_data
from training.modeling import FORMAT_VERSION, LabelSchema, build_model, load_tokenizer, save_trainable
from training.module import NewsDataModule, NewsImpactModule, Throughput
from training.scale import Scale
from training.sources import impact_calibrations
from training.teacher import Teacher

log = logging.getLogger("newsimpact.train")


def config_hash(config: TrainConfig) -> str:
    """Hash of everything that defines the model (not where it is written or whether it resumes)."""
    payload = asdict(config)
    for key in ("run_dir", "resume", "name"):
        payload.pop(key, None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_revision() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


class RunCSVLogger(Logger):
    """``metrics.csv`` straight in the run directory, one row per logging step, kept across resumes.

    Lightning's CSVLogger writes under ``<save_dir>/<name>/<version>/`` and deletes an existing
    metrics.csv (a resumed run would lose its first attempt's rows); changing either means overriding its
    private members. This is Lightning's public ``Logger`` interface over the csv module instead.
    """

    def __init__(self, run_dir: Path, flush_every_s: float = 5.0):
        super().__init__()
        self.path = Path(run_dir) / "metrics.csv"
        self.flush_every_s = flush_every_s
        self.rows: list[dict[str, Any]] = []
        self.last_flush = 0.0
        if self.path.exists():  # a resumed run: the rows of its earlier attempts stay
            with self.path.open(newline="") as fh:
                self.rows = list(csv.DictReader(fh))

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: run.json holds the whole resolved config."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        self.rows.append({"step": step, **values})

    @rank_zero_only
    def save(self) -> None:
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self._write()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._write()

    def _write(self) -> None:
        self.last_flush = time.monotonic()
        if not self.rows:
            return
        keys = sorted({k for row in self.rows for k in row})
        tmp = self.path.with_name(".metrics.csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def build_loggers(config: TrainConfig, run_dir: Path) -> list[Any]:
    loggers: list[Any] = []
    for name in config.loggers:
        if name == "csv":
            loggers.append(RunCSVLogger(run_dir))
        elif name == "tensorboard":
            from pytorch_lightning.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
        elif name == "mlflow":
            from pytorch_lightning.loggers import MLFlowLogger

            # Tracking URI from MLFLOW_TRACKING_URI, as mlflow itself reads it; local ./mlruns otherwise.
            loggers.append(
                MLFlowLogger(experiment_name=config.name, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
            )
    return loggers


def build_trainer(config: TrainConfig, run_dir: Path, model: Any = None) -> pl.Trainer:
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    ckpt = config.checkpoint
    # Two kinds of checkpoint. For resuming: the newest weights every N steps (step*.ckpt, last.ckpt).
    # For selection: the weights right after each validation that ranks in the top k by the monitor
    # (best-*.ckpt); saving those on a train step instead would pair a step's weights with the score of
    # an earlier validation.
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="step{step}",
            auto_insert_metric_name=False,
            save_last=True,
            every_n_train_steps=ckpt.every_n_train_steps,
            save_top_k=1,
        )
    ]
    if ckpt.monitor:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"),
                filename="best-step{step}",
                auto_insert_metric_name=False,
                monitor=ckpt.monitor,
                mode=ckpt.mode,
                save_top_k=ckpt.save_top_k,
                save_on_train_epoch_end=False,
            )
        )
    if config.loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks.append(Throughput())
    trainer_kwargs = asdict(config.trainer)
    trainer_kwargs["strategy"] = build_strategy(config, model)
    return pl.Trainer(
        default_root_dir=str(run_dir),
        logger=build_loggers(config, run_dir) or False,
        callbacks=callbacks,
        **trainer_kwargs,
    )


def block_classes(model: Any) -> set[type]:
    """The backbone's repeated block classes (transformers' ``_no_split_modules``: BertLayer, ...)."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return {type(m) for m in model.modules() if type(m).__name__ in names}


def build_strategy(config: TrainConfig, model: Any) -> Any:
    """``trainer.strategy`` as Lightning takes it; ``fsdp`` becomes Lightning's FSDPStrategy sharding each
    transformer block (auto-wrap on the backbone's block classes; a bare ``fsdp`` wraps nothing and shards
    nothing) with the original parameters kept (LoRA's trainable and frozen weights share blocks)."""
    strategy = config.trainer.strategy
    if strategy == "fsdp":
        from pytorch_lightning.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy=block_classes(model) or None, use_orig_params=True)
    if isinstance(strategy, str) and strategy.startswith("deepspeed"):
        from pytorch_lightning.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(**deepspeed_options(strategy))
    return strategy


def deepspeed_options(name: str) -> dict[str, Any]:
    """Lightning's settings for a registered DeepSpeed strategy name (``deepspeed_stage_2`` ...), saving
    only the trainable weights: DeepSpeed writes its own checkpoint folders, which bypass the module's
    trimming to trainable tensors, so without this every checkpoint held the whole frozen backbone."""
    from pytorch_lightning.strategies import StrategyRegistry

    return {**StrategyRegistry[name]["init_params"], "exclude_frozen_parameters": True}


@contextlib.contextmanager
def full_parameters(trainer: pl.Trainer) -> Any:
    """Every rank's shards gathered (on rank 0) while the final adapter is written: under FSDP each rank
    holds only its shard of each flat parameter. A collective: every rank enters it."""
    from pytorch_lightning.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy) and trainer.world_size > 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = trainer.strategy.model
        assert root is not None
        with FSDP.summon_full_params(root, writeback=False, rank0_only=True):
            yield
    else:
        yield


def write_run_json(run_dir: Path, payload: dict[str, Any]) -> None:
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(run_dir / "run.json")


# What a run's adapter/newsimpact.json carries of run.json (training/model_meta.py, the folder's contract)
ADAPTER_META_KEYS = (
    "format_version",
    "base_model",
    "schema",
    "max_length",
    "replace_urls",
    "pooling",
    "topic_pooling",
    "head_dropout",
    "peft",
    "config_hash",
    "impact_calibration",
    "label_counts",
    "training_data",
)


class _Parts(NamedTuple):
    tokenizer: Any
    schema: LabelSchema
    datamodule: NewsDataModule
    model: Any
    module: NewsImpactModule


def _assemble(config: TrainConfig) -> _Parts:
    """The tokenizer, label schema, datamodule, model and Lightning module a run trains."""
    scale = Scale.of(config.schema).to_dict()  # saved resolved: the model folder says its bands itself
    schema = LabelSchema(
        list(config.schema.sentiment_labels),
        list(config.schema.topics),
        scale["coarse_labels"],
        scale["score_cuts"],
    )
    tokenizer = load_tokenizer(config.model.pretrained_model_name_or_path, config.model.trust_remote_code)
    teacher = (
        Teacher(config.distill, config.schema.topics, schema.sentiment_labels, list(scale["coarse_labels"]))
        if config.distill.teacher
        else None
    )
    # impact_from_return sources: the |return| -> impact rank table travels with the model (run.json,
    # adapter/ and every export), so evaluation and users map impact the way training did.
    datamodule = NewsDataModule(
        config.data,
        config.schema,
        tokenizer,
        config.model.max_length,
        impact_calibrations(config.data),
        config.model.replace_urls,
        teacher,
        seed=config.seed,
    )
    model = build_model(config.model, config.peft, schema)
    powers = {"balanced": 1.0, "sqrt_balanced": 0.5}
    module = NewsImpactModule(
        model,
        config.optim,
        config.loss,
        None,
        config.distill,
        teacher_width=teacher.width if teacher is not None else None,
        class_weight_power=powers.get(config.loss.sentiment_class_weights or ""),
    )
    return _Parts(tokenizer, schema, datamodule, model, module)


def _started_info(config: TrainConfig, parts: _Parts) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "status": "running",
        "base_model": config.model.pretrained_model_name_or_path,
        "schema": parts.schema.to_dict(),
        "max_length": config.model.max_length,
        "replace_urls": config.model.replace_urls,
        "pooling": parts.model.pooling,
        "topic_pooling": parts.model.topic_pooling,
        "head_dropout": config.model.head_dropout,
        "peft": asdict(config.peft),
        "config": asdict(config),
        "config_hash": config_hash(config),
        "impact_calibration": parts.datamodule.calibrations,
        "training_data": training_data(config.data),  # sources, splits and their date ranges
        "git_revision": git_revision(),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def _finished_info(
    trainer: pl.Trainer, parts: _Parts, config: TrainConfig, seconds: float, resumed_from: str | None
) -> dict[str, Any]:
    module, model = parts.module, parts.model
    throughput = next(cb for cb in trainer.callbacks if isinstance(cb, Throughput))  # type: ignore[attr-defined]
    return {
        "status": "finished",
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "train_seconds": round(seconds, 1),
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1},
        "val_metrics": module.last_val_metrics,
        "num_trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "resumed_from": resumed_from,
        "best_checkpoint": _best_checkpoint(trainer),
        "best_score": _best_score(trainer, module, config),
        "val_history": module.val_history,
        "train_rows": module.train_rows,
        "label_counts": module.label_counts,
        "throughput": throughput.figures(config.data.batch_size * config.trainer.accumulate_grad_batches),
    }


def run(config: TrainConfig, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Train from a validated config; returns the contents of ``run.json``."""
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    if not config.resume and (run_path / "metrics.csv").exists():
        (run_path / "metrics.csv").unlink()  # a fresh run in an old folder starts a fresh log
    pl.seed_everything(config.seed, workers=True)
    parts = _assemble(config)
    trainer = build_trainer(config, run_path, parts.model)
    info = _started_info(config, parts)
    if trainer.is_global_zero:
        write_run_json(run_path, info)
    ckpt_path = str(run_path / "checkpoints" / "last.ckpt") if config.resume else None
    start = time.perf_counter()
    trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
    info.update(_finished_info(trainer, parts, config, time.perf_counter() - start, ckpt_path))
    with full_parameters(trainer):
        if trainer.is_global_zero:
            save_trainable(parts.model, run_path / "adapter", {k: info[k] for k in ADAPTER_META_KEYS})
            parts.tokenizer.save_pretrained(run_path / "adapter")
            write_run_json(run_path, info)
            log.info(
                "run finished: %s (step %d, %.0fs)", run_path, trainer.global_step, info["train_seconds"]
            )
    return info


def _selection_callback(trainer: pl.Trainer) -> Any:
    """The monitored checkpoint callback (None without checkpoint.monitor)."""
    return next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)), None)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = _selection_callback(trainer)
    return (callback.best_model_path or None) if callback is not None else None


def _best_score(trainer: pl.Trainer, module: NewsImpactModule, config: TrainConfig) -> float | None:
    """The best value of ``checkpoint.monitor`` this run saw (what a sweep maximises or minimises).

    Taken over every validation of this process and the checkpoint callback's best (which survives a
    resume); None without a monitor or before the first validation.
    """
    monitor = config.checkpoint.monitor
    if monitor is None:
        return None
    key = monitor.removeprefix("val/")
    values = [h[key] for h in module.val_history if key in h]
    callback = _selection_callback(trainer)
    score = callback.best_model_score if callback is not None else None
    if score is not None:
        values.append(float(score))
    if not values:
        return None
    return max(values) if config.checkpoint.mode == "max" else min(values)


def _quiet_known_warnings() -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


@entry_point("train")
def main(cfg: DictConfig) -> float | None:
    """Train; returns the best ``checkpoint.monitor`` value (the objective of a Hydra sweep)."""
    _quiet_known_warnings()

    config, _ = load_validated(cfg, TrainConfig, validate_train_config)
    log.info("config:\n%s", OmegaConf.to_yaml(OmegaConf.structured(config)))
    return run(config, config.run_dir)["best_score"]


if __name__ == "__main__":
    main()
