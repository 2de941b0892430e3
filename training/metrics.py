"""Per-head validation metrics (torchmetrics), each updated only on the rows that carry its head's label:
the one definition the Lightning module's validation and ``newsimpact evaluate`` share. No Lightning here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchmetrics
from torchmetrics import classification as tmc
from torchmetrics import regression as tmr


class HeadMetrics(torch.nn.Module):
    """torchmetrics for every head, updated only on rows that carry that head's label."""

    counts: torch.Tensor
    regression: Any
    sentiment: Any
    topics: Any

    def __init__(self, n_classes: int, n_topics: int, membership: torch.Tensor | None = None):
        super().__init__()
        self.sentiment = torchmetrics.MetricCollection(
            {
                "sentiment_acc": tmc.MulticlassAccuracy(n_classes, average="micro", ignore_index=-100),
                "sentiment_f1_macro": tmc.MulticlassF1Score(n_classes, average="macro", ignore_index=-100),
            }
        )
        # A scale finer than its projection (five levels): also the three-class figures, over every row with
        # a sentiment label, coarse or fine; the prediction is the coarse class of most probability.
        self.membership = membership
        self.coarse = torchmetrics.MetricCollection(
            {}
            if membership is None
            else {
                "sentiment_coarse_acc": tmc.MulticlassAccuracy(membership.shape[0], average="micro"),
                "sentiment_coarse_f1_macro": tmc.MulticlassF1Score(membership.shape[0], average="macro"),
            }
        )
        self.regression = torch.nn.ModuleDict(
            {
                head: torchmetrics.MetricCollection(
                    {"mae": tmr.MeanAbsoluteError(), "spearman": tmr.SpearmanCorrCoef()}
                )
                for head in ("sentiment_score", "impact", "tickers")
            }
        )
        self.topics = torchmetrics.MetricCollection(
            {
                # -1: a topic the row's source does not label (data.sources.*.topic_scope)
                "topics_f1_micro": tmc.MultilabelF1Score(max(1, n_topics), average="micro", ignore_index=-1),
                "topics_f1_macro": tmc.MultilabelF1Score(max(1, n_topics), average="macro", ignore_index=-1),
            }
        )
        self.n_topics = n_topics
        # How many labelled rows each group saw this epoch (summed over ranks when computed).
        self.register_buffer("counts", torch.zeros(6), persistent=False)

    def update(self, out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        valid = batch["sentiment_id"] != -100
        if valid.any():
            self.sentiment.update(out["sentiment_logits"][valid], batch["sentiment_id"][valid])
            self.counts[0] += valid.sum()
        if self.membership is not None:
            rows = batch["sentiment_group"] >= 0
            if rows.any():
                probs = torch.softmax(out["sentiment_logits"][rows].float(), -1)
                self.coarse.update(probs @ self.membership.to(probs).T, batch["sentiment_group"][rows])
                self.counts[5] += rows.sum()
        pairs = (
            ("sentiment_score", out["sentiment_score"], batch["sentiment_score"], 1),
            ("impact", out["impact"], batch["impact"], 2),
            ("tickers", out["ticker_score"].reshape(-1), batch["entity_scores"].reshape(-1), 3),
        )
        for head, pred, target, slot in pairs:
            mask = ~torch.isnan(target)
            if mask.any():
                self.regression[head].update(pred[mask].float(), target[mask].float())
                self.counts[slot] += mask.sum()
        rows = ~torch.isnan(batch["topic_targets"]).all(dim=1)
        if rows.any() and self.n_topics:
            target = torch.nan_to_num(batch["topic_targets"][rows], nan=-1.0).long()
            self.topics.update(torch.sigmoid(out["topic_logits"][rows]), target)
            self.counts[4] += rows.sum()

    def compute(self) -> dict[str, float]:
        counts = self.counts.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        results: dict[str, float] = {}
        if counts[0] > 0:
            results.update({k: float(v) for k, v in self.sentiment.compute().items()})
        for slot, head in ((1, "sentiment_score"), (2, "impact"), (3, "tickers")):
            # Spearman needs at least two labelled rows.
            if counts[slot] > 1:
                results.update({f"{head}_{k}": float(v) for k, v in self.regression[head].compute().items()})
        if counts[4] > 0:
            results.update({k: float(v) for k, v in self.topics.compute().items()})
        if counts[5] > 0:
            results.update({k: float(v) for k, v in self.coarse.compute().items()})
        return {k: v for k, v in results.items() if not math.isnan(v)}

    def reset(self) -> None:
        self.sentiment.reset()
        self.coarse.reset()
        self.topics.reset()
        for collection in self.regression.values():
            collection.reset()
        self.counts.zero_()
