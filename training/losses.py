"""The masked multi-task loss: every head's loss over the rows that carry its label (a row without one adds
nothing and no gradient), weighted per head (``loss.*``), with class weights, label smoothing and the
coarse-class term of a finer scale for sentiment, and the symmetric KL of R-Drop. No Lightning here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.config import HEADS, LossConfig


def balanced_class_weights(labels: torch.Tensor, n_classes: int, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency class weights to ``power`` (1: balanced, 0.5: square root), mean 1 over the
    present classes; absent classes get weight 0."""
    labels = labels[labels >= 0]
    counts = torch.bincount(labels, minlength=n_classes).float()
    present = counts > 0
    weights = torch.zeros(n_classes)
    weights[present] = (counts[present].sum() / counts[present]) ** power
    weights[present] /= weights[present].mean()
    return weights


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def sentiment_loss(
    logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    membership: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on rows with a label of the scale; on rows that name only a coarse class of several
    labels (``sentiment_id`` -100, ``sentiment_group`` set; ``membership`` [G, K] from
    :class:`training.scale.Scale`), -log of the class's summed probability, smoothed over the coarse
    classes as cross-entropy is over the labels. The mean over both kinds of rows (class weights, where
    given, weigh the fine rows as ``F.cross_entropy`` does)."""
    target = batch["sentiment_id"]
    fine = target != -100
    group = batch.get("sentiment_group")
    coarse = None
    if group is not None and membership is not None:
        coarse = (~fine) & (group >= 0)
    # Every row goes through both terms and the mask zeroes what does not apply: no boolean indexing and
    # no ``mask.any()``, so a step never waits for the device to say which rows are labelled.
    weight = None if class_weights is None else class_weights.to(logits.dtype)
    fine_f = fine.to(logits.dtype)
    per_row = F.cross_entropy(
        logits, target.clamp(min=0), weight=weight, label_smoothing=label_smoothing, reduction="none"
    )
    total = (per_row * fine_f).sum()
    count = (weight[target.clamp(min=0)] * fine_f).sum() if weight is not None else fine_f.sum()
    if coarse is not None:
        assert membership is not None and group is not None
        member = membership.to(logits.device) > 0  # [G, K]
        log_p = torch.log_softmax(logits.float(), dim=-1)
        per_group = -torch.logsumexp(log_p[:, None, :].masked_fill(~member[None], float("-inf")), dim=-1)
        nll = per_group.gather(1, group.clamp(min=0)[:, None]).squeeze(1)  # [N]: -log P(row's class)
        if label_smoothing:
            nll = (1 - label_smoothing) * nll + label_smoothing * per_group.mean(1)
        total = total + (nll * coarse).sum()
        count = count + coarse.sum()
    return total / count.clamp(min=1)


def compute_losses(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    weights: LossConfig,
    class_weights: torch.Tensor | None = None,
    membership: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-head losses, each averaged over the rows that carry that label, plus their weighted ``loss``.


    A head with no label in the batch contributes ``0 * output`` rather than nothing, so every trainable
    parameter still receives a (zero) gradient: DDP needs no ``find_unused_parameters`` and
    mixed-source batches need no special casing.
    """
    losses: dict[str, torch.Tensor] = {}
    losses["sentiment"] = sentiment_loss(
        out["sentiment_logits"], batch, weights.sentiment_label_smoothing, class_weights, membership
    )
    for key, pred in (("sentiment_score", out["sentiment_score"]), ("impact", out["impact_logits"])):
        y = batch[key]
        mask = ~torch.isnan(y)
        y0 = torch.nan_to_num(y)
        if key == "impact":
            per_row = F.binary_cross_entropy_with_logits(pred, y0.clamp(0, 1), reduction="none")
        else:
            per_row = (pred - y0) ** 2
        losses[key] = _masked_mean(per_row, mask)  # 0 with a zero gradient when no row is labelled
    topic_y = batch["topic_targets"]
    topic_mask = ~torch.isnan(topic_y)
    topic_loss = F.binary_cross_entropy_with_logits(
        out["topic_logits"], torch.nan_to_num(topic_y), reduction="none"
    )
    losses["topics"] = _masked_mean(topic_loss, topic_mask)
    ent_y = batch["entity_scores"]
    ent_mask = ~torch.isnan(ent_y)
    # squared distance to the target's band (a point, or a coarse class's span; training.data._Encoder._band),
    # with loss.tickers_coarse_axis in steps of the label's own scale
    bands = batch.get("entity_bands")
    low, high = (bands[..., 0], bands[..., 1]) if bands is not None else (ent_y, ent_y)
    unit = torch.ones_like(ent_y)
    if weights.tickers_coarse_axis and bands is not None and bands.shape[-1] > 2:
        unit = bands[..., 2]
    score = out["ticker_score"]
    nearest = torch.maximum(torch.minimum(score, torch.nan_to_num(high)), torch.nan_to_num(low))
    ticker_loss = ((score - nearest) / torch.nan_to_num(unit, nan=1.0)) ** 2
    losses["tickers"] = _masked_mean(ticker_loss, ent_mask)
    total = sum(getattr(weights, head) * losses[head] for head in HEADS)
    losses["loss"] = total  # type: ignore[assignment]
    return losses


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p_a || p_b) + KL(p_b || p_a) / 2 (R-Drop's consistency term)."""
    log_a = F.log_softmax(logits_a.float(), dim=-1)
    log_b = F.log_softmax(logits_b.float(), dim=-1)
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="batchmean")
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="batchmean")
    return (kl_ab + kl_ba) / 2
