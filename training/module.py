"""Lightning glue: the data module, the multi-task module (its per-head metrics: training/metrics.py) and
the throughput callback behind run.json's `throughput`."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from training.config import DataConfig, DistillConfig, LossConfig, OptimConfig, SchemaConfig
from training.data import Collator, LengthGroupedSampler, build_splits, label_counts
from training.distill import distill_losses
from training.losses import balanced_class_weights, compute_losses, symmetric_kl
from training.metrics import HeadMetrics
from training.modeling import NewsImpactModel, trainable_state_dict
from training.records import untrained
from training.scale import Scale

log = logging.getLogger("newsimpact.train")


class NewsDataModule(pl.LightningDataModule):
    """Builds the encoded splits once (rank 0 fills the ``datasets`` cache, the others read it)."""

    def __init__(
        self,
        data: DataConfig,
        schema: SchemaConfig,
        tokenizer: Any,
        max_length: int,
        calibrations: dict[str, dict[str, Any]] | None = None,
        replace_urls: str | None = None,
        teacher: Any = None,
        seed: int = 13,
    ):
        super().__init__()
        self.seed = seed
        self.teacher = teacher
        self.calibrations = calibrations
        self.replace_urls = replace_urls
        self.data = data
        self.schema = schema
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.splits: dict[str, Any] = {}
        self.collate = Collator(tokenizer.pad_token_id, len(schema.topics), data.pad_to_multiple_of)

    def _build(self) -> dict[str, Any]:
        return build_splits(
            self.data,
            self.schema,
            self.tokenizer,
            self.max_length,
            calibrations=self.calibrations,
            replace_urls=self.replace_urls,
            teacher=self.teacher,
            seed=self.seed,
        )

    def prepare_data(self) -> None:
        self._build()

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self._build()
            train = self.splits.get("train")
            if train is not None and "row_index" not in train.column_names:
                # Which training rows each rank saw (run.json "train_rows"): a check on the data split.
                self.splits["train"] = train.add_column("row_index", list(range(len(train))))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.splits[split]
        sampler = None
        if shuffle and self.data.group_by_length:
            lengths = [len(ids) for ids in dataset["input_ids"]]
            sampler = LengthGroupedSampler(lengths, batch_size, seed=self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.data.num_workers,
            persistent_workers=self.data.num_workers > 0,
            pin_memory=self._on_cuda(),  # page-locked batches: the copy to the GPU overlaps compute
        )

    def _on_cuda(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return False
        from pytorch_lightning.accelerators import CUDAAccelerator

        return isinstance(trainer.accelerator, CUDAAccelerator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.data.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if "validation" not in self.splits:
            return []
        return self._loader("validation", self.data.eval_batch_size, shuffle=False)

    def label_counts(self) -> dict[str, Any]:
        """Training rows per head, class and topic (training.data.label_counts)."""
        self.setup("fit")
        return label_counts(self.splits["train"], self.schema)

    def class_weights(self, power: float = 1.0) -> torch.Tensor:
        """Inverse-frequency sentiment class weights (to ``power``) from the training split."""
        self.setup("fit")
        labels = torch.tensor(self.splits["train"]["sentiment_id"])
        return balanced_class_weights(labels, len(self.schema.sentiment_labels), power)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.data.eval_batch_size, shuffle=False)


class NewsImpactModule(pl.LightningModule):
    """Masked multi-task fine-tuning of a :class:`NewsImpactModel`.

    Checkpoints keep only trainable weights (adapter + heads); the frozen backbone is rebuilt from its
    pretrained files, which is why loading is non-strict.
    """

    class_weights: torch.Tensor | None
    membership: torch.Tensor | None

    def __init__(
        self,
        model: NewsImpactModel,
        optim: OptimConfig,
        loss_weights: LossConfig,
        class_weights: torch.Tensor | None = None,
        distill: DistillConfig | None = None,
        teacher_width: int | None = None,
        class_weight_power: float | None = None,
    ):
        super().__init__()
        self.model = model.train()  # from_pretrained hands it over in eval mode (see on_fit_start)
        self.register_buffer("class_weights", class_weights, persistent=False)
        # Class weights from the training split, computed in setup(): after Lightning has set the data
        # module up (rank 0 builds the datasets cache first), not before the Trainer exists, where every
        # DDP rank would build it at once.
        self.class_weight_power = class_weight_power
        self.optim = optim
        self.loss_weights = loss_weights
        self.distill = distill if distill is not None and distill.teacher else None
        # distill.hidden_weight: the student's pooled state mapped to the teacher's width. Training only:
        # it sits outside self.model, so export and evaluation never see it.
        self.distill_projection = (
            torch.nn.Linear(int(model.backbone.config.hidden_size), teacher_width)
            if self.distill is not None and self.distill.hidden_weight > 0 and teacher_width
            else None
        )
        self.strict_loading = False
        scale = Scale.of(model.schema)
        # [G, K] coarse class membership of the labels when the scale refines its projection (five levels)
        membership = torch.tensor(scale.membership, dtype=torch.float32) if scale.refines else None
        self.register_buffer("membership", membership, persistent=False)
        self.val_metrics = HeadMetrics(
            len(model.schema.sentiment_labels), len(model.schema.topics), membership
        )
        self.last_val_metrics: dict[str, float] = {}
        # Every validation of this process: {"step": n, metric: value}; the best is a sweep's objective.
        self.val_history: list[dict[str, float]] = []
        self._ema: list[torch.Tensor] | None = None  # optim.ema_decay: the averaged trainable weights
        self._rows_seen: torch.Tensor | None = None
        self.train_rows: dict[str, Any] | None = None
        self.label_counts: dict[str, Any] | None = None
        self._ema_from_checkpoint: dict[str, torch.Tensor] | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch["input_ids"], batch["attention_mask"], batch.get("entity_mask"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self._mark_rows(batch)
        rdrop = self.loss_weights.sentiment_rdrop
        if rdrop > 0:
            # R-Drop: the batch twice in one forward pass (each copy gets its own dropout masks); the head
            # losses average over both copies and the two sentiment distributions are pulled together.
            n = batch["input_ids"].shape[0]
            batch = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = self(batch)
            losses = compute_losses(out, batch, self.loss_weights, self.class_weights, self.membership)
            logits = out["sentiment_logits"]
            losses["sentiment_rdrop"] = symmetric_kl(logits[:n], logits[n:])
            losses["loss"] = losses["loss"] + rdrop * losses["sentiment_rdrop"]
        else:
            out = self(batch)
            losses = compute_losses(out, batch, self.loss_weights, self.class_weights, self.membership)
        if self.distill is not None and "teacher_probs" in batch:
            # Soft targets from the teacher (training/distill.py), each head weighted like its hard loss.
            heads = {"score": "sentiment_score"}
            terms = distill_losses(
                out, batch, self.distill.temperature, self.membership, self.distill_projection
            )
            for name, term in terms.items():
                head = name.removeprefix("distill_")
                losses[name] = term
                weight = (
                    self.distill.hidden_weight
                    if head == "hidden"
                    else self.distill.weight * getattr(self.loss_weights, heads.get(head, head))
                )
                losses["loss"] = losses["loss"] + weight * term
        size = batch["input_ids"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/loss_{k}": v for k, v in losses.items() if k != "loss"}, batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        losses = compute_losses(out, batch, self.loss_weights, self.class_weights, self.membership)
        self.log("val/loss", losses["loss"], sync_dist=True, batch_size=batch["input_ids"].shape[0])
        self.val_metrics.update(out, batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        self.val_metrics.reset()
        self.last_val_metrics = metrics
        if not self.trainer.sanity_checking:
            self.val_history.append({"step": self.global_step, **metrics})
        # Already reduced across ranks by torchmetrics; logging on every rank keeps checkpoint monitors in step.
        for key, value in metrics.items():
            self.log(f"val/{key}", value, prog_bar=key == "sentiment_f1_macro")
        self._swap_ema()  # back to the raw weights for training

    def configure_optimizers(self) -> Any:
        from transformers import get_scheduler

        heads = [p for p in self.model.heads.parameters() if p.requires_grad]
        if self.distill_projection is not None:
            heads += list(self.distill_projection.parameters())
        head_ids = {id(p) for p in heads}
        body = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": body, "lr": self.optim.lr}, {"params": heads, "lr": self.optim.head_lr}]
        kwargs: dict[str, Any] = {
            "weight_decay": self.optim.weight_decay,
            "betas": tuple(self.optim.betas),
        }
        # Multi-tensor AdamW: a few kernels per step instead of a Python loop over ~100 LoRA tensors
        # (measured: docs/experiments/training.md). fused=True would be faster still, but Lightning refuses
        # gradient clipping with fused optimizers.
        optimizer = torch.optim.AdamW(groups, foreach=self.optim.foreach, **kwargs)
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = get_scheduler(
            self.optim.scheduler,
            optimizer,
            num_warmup_steps=int(self.optim.warmup_ratio * total),
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(
        self,
        optimizer: Any,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Norm clipping under FSDP through the root FSDP module (norms over every shard, what
        ``torch.nn.utils.clip_grad_norm_`` cannot do, and why Lightning's FSDP precision plugin refuses
        it); the usual path everywhere else."""
        from pytorch_lightning.strategies import FSDPStrategy

        if gradient_clip_val and isinstance(self.trainer.strategy, FSDPStrategy):
            if gradient_clip_algorithm not in (None, "norm"):
                raise ValueError(
                    f"trainer.gradient_clip_algorithm={gradient_clip_algorithm} is not supported with FSDP; use norm"
                )
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)  # type: ignore[union-attr,operator]
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --- exponential moving average of the trainable weights (optim.ema_decay) -------------------------
    # Not Lightning's EMAWeightAveraging: it wraps the whole LightningModule in torch's AveragedModel, a deep
    # copy that includes the frozen backbone (+88 MB for MiniLM, +438 MB for MPNet of weights that never
    # change) and averages every parameter each step; here only the trainable ones (LoRA + heads, <3 %)
    # are averaged, with one fused torch._foreach_lerp_, and the average rides in the run's checkpoints.

    def _trainable(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.parameters() if p.requires_grad]

    def _count_labels(self) -> None:
        try:
            trainer = self.trainer
        except RuntimeError:  # called outside a Trainer (tests call the hooks directly)
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "label_counts"):
            return
        self.label_counts = datamodule.label_counts()
        missing = untrained(self.label_counts)
        if trainer.is_global_zero and (missing["sentiment"] or missing["topics"]):
            log.warning(
                "no training row teaches sentiment classes %s or topics %s: the scorer leaves them out "
                "(they stay in the schema; label_counts in run.json)",
                missing["sentiment"] or "[]",
                missing["topics"] or "[]",
            )

    def setup(self, stage: str) -> None:
        if self.class_weight_power is not None and self.class_weights is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "class_weights"):
                self.class_weights = datamodule.class_weights(self.class_weight_power).to(self.device)

    def on_fit_start(self) -> None:
        self._count_labels()
        # from_pretrained returns the backbone in eval mode and Lightning keeps modules in whatever mode they
        # are in (validation restores it afterwards), so without this the backbone's dropout never runs.
        self.model.train()
        if self.optim.ema_decay is None or self._ema is not None:
            return
        if self._ema_from_checkpoint is not None:  # resumed: the average saved with the checkpoint
            names = [n for n, p in self.named_parameters() if p.requires_grad]
            self._ema = [self._ema_from_checkpoint[n].to(self.device).clone() for n in names]
            self._ema_from_checkpoint = None
        else:
            self._ema = [p.clone() for p in self._trainable()]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self._ema is not None and self.optim.ema_decay is not None:
            # Warm-up: early averages would otherwise be dominated by the random initial heads.
            step = self.trainer.global_step
            decay = min(self.optim.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(self._ema, self._trainable(), 1.0 - decay)

    def _swap_ema(self) -> None:
        if self._ema is None:
            return
        with torch.no_grad():
            for average, param in zip(self._ema, self._trainable()):
                held = param.clone()
                param.copy_(average)
                average.copy_(held)

    def on_validation_epoch_start(self) -> None:
        self._swap_ema()  # validate the average (and select checkpoints on it)

    def on_train_end(self) -> None:
        self._swap_ema()  # the run's adapter/ holds the average
        self._ema = None
        self.train_rows = self._rows_per_rank()

    # --- which training rows each process saw (run.json "train_rows") ----------------------------------
    def _mark_rows(self, batch: dict[str, torch.Tensor]) -> None:
        rows = batch.get("row_index")
        if rows is None:
            return
        if self._rows_seen is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            n = len(datamodule.splits["train"]) if datamodule is not None else int(rows.max()) + 1
            # on the rows' device: marking them is one scatter per step, never a copy to the host (a sync)
            self._rows_seen = torch.zeros(n, dtype=torch.bool, device=rows.device)
        self._rows_seen[rows] = True

    def _rows_per_rank(self) -> dict[str, Any] | None:
        """Rows seen per rank, how many distinct rows all ranks saw and how many several ranks saw (under
        DDP that is only the few rows the distributed sampler repeats to even out an epoch)."""
        if self._rows_seen is None:
            return None
        gathered = self.all_gather(self._rows_seen.to(self.device, torch.uint8))
        assert isinstance(gathered, torch.Tensor)
        seen = gathered.cpu().reshape(-1, self._rows_seen.numel())  # [world, rows], this attempt
        return {
            "dataset_rows": int(seen.shape[1]),
            "per_rank": [int(r.sum()) for r in seen],
            "distinct": int((seen.sum(0) > 0).sum()),
            "seen_by_several_ranks": int((seen.sum(0) > 1).sum()),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = trainable_state_dict(self, prefix="")
        if self._ema is not None:
            # state_dict (what export and evaluation load) holds the average; resume needs the raw weights too.
            checkpoint["raw_state_dict"] = {k: v.clone() for k, v in checkpoint["state_dict"].items()}
            self._swap_ema()
            checkpoint["state_dict"] = {
                k: v.clone() for k, v in trainable_state_dict(self, prefix="").items()
            }
            self._swap_ema()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "raw_state_dict" in checkpoint:
            self._ema_from_checkpoint = checkpoint["state_dict"]
            checkpoint["state_dict"] = checkpoint["raw_state_dict"]


class Throughput(pl.Callback):
    """Steady-state training speed and peak GPU memory for ``run.json``: steps/s over the steps after the
    first tenth (at least one, at most 10; compilation, allocator and loader warm-up excluded), timed
    at the end of every optimizer step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, not after fit(): the module is still on its device (Lightning moves it back at teardown)
        self.device = str(pl_module.device)
        self.peak_gb = None
        if pl_module.device.type == "cuda":
            self.peak_gb = round(torch.cuda.max_memory_allocated(pl_module.device) / 1e9, 3)

    def figures(self, batch_size: int) -> dict[str, Any]:
        figures: dict[str, Any] = {"device": getattr(self, "device", None)}
        warm = min(10, max(1, len(self.stamps) // 10))
        if len(self.stamps) > warm + 1:
            steps = len(self.stamps) - 1 - warm
            rate = steps / (self.stamps[-1] - self.stamps[warm])
            figures["steady_steps_per_s"] = round(rate, 3)
            figures["steady_samples_per_s"] = round(rate * batch_size, 1)
        if getattr(self, "peak_gb", None) is not None:
            figures["gpu_peak_memory_gb"] = self.peak_gb
        return figures
