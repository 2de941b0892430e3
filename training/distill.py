"""Knowledge distillation, the loss side: the student's soft-target losses against a teacher's outputs.

The teacher pass that produces those outputs with the batch scorer is training/teacher.py (an entry-layer
module: it runs ``inference.score``); this module is core and imports nothing from ``inference``.

The student's loss adds, for the teacher's heads (``distill.heads``, default: those the teacher was
validated on): ``T^2 * KL(teacher_T || student_T)`` on the sentiment distribution at temperature ``T``,
squared error on the sentiment score, and binary cross-entropy against the teacher's impact and topic
probabilities, all times ``distill.weight``, next to the hard-label loss where a row has labels. With
``distill.hidden_weight > 0`` the student's pooled state, mapped to the teacher's width by a learned linear
layer that lives only in training, is pulled towards the teacher's by the cosine distance times that weight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from training.config import DISTILL_HEADS

log = logging.getLogger("newsimpact.distill")

TEACHER_COLUMNS = ("teacher_probs", "teacher_score", "teacher_impact", "teacher_topics", "teacher_embedding")


def teacher_heads(meta: dict[str, Any], wanted: Sequence[str] | None) -> list[str]:
    """The heads to distil: ``wanted``, or those the teacher's export reports validation metrics for."""
    if wanted is not None:
        return [h for h in DISTILL_HEADS if h in wanted]
    keys = set(meta.get("metrics") or {})
    found = []
    if keys & {"sentiment_acc", "sentiment_f1_macro"}:
        found.append("sentiment")
    if any(k.startswith("sentiment_score_") for k in keys):
        found.append("sentiment_score")
    if any(k.startswith("impact_") for k in keys):
        found.append("impact")
    if any(k.startswith("topics_") for k in keys):
        found.append("topics")
    return found


def distill_losses(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    temperature: float,
    membership: torch.Tensor | None = None,
    projection: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """The teacher terms: per head, averaged over rows (and topics) that have a teacher target. A teacher
    whose labels are the student's coarse classes (``membership`` [G, K]) is matched by the student's
    coarse distribution. With ``projection`` (student width -> teacher width) and the teacher's pooled
    states in the batch, ``distill_hidden`` is their mean cosine distance."""
    losses: dict[str, torch.Tensor] = {}
    states = batch.get("teacher_embedding")
    if projection is not None and states is not None:
        known = ~torch.isnan(states).any(-1)  # rows of a source the teacher did not score have none
        if known.any():
            mapped = projection(out["pooled"][known].float())
            cosine = F.cosine_similarity(mapped, states[known].float(), dim=-1)
            losses["distill_hidden"] = (1.0 - cosine).mean()
    probs = batch.get("teacher_probs")
    if probs is not None:
        rows = ~torch.isnan(probs).any(-1)
        if rows.any():
            student = F.log_softmax(out["sentiment_logits"][rows].float() / temperature, -1)
            if membership is not None and probs.shape[-1] == membership.shape[0] != student.shape[-1]:
                member = membership.to(student.device) > 0
                student = torch.logsumexp(student[:, None, :].masked_fill(~member[None], float("-inf")), -1)
            teacher = probs[rows].clamp_min(1e-8).log() / temperature
            teacher = F.log_softmax(teacher, -1)  # the teacher's distribution at temperature T
            kl = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
            losses["distill_sentiment"] = kl * temperature**2
    for key, pred in (
        ("teacher_score", out.get("sentiment_score")),
        ("teacher_impact", out.get("impact_logits")),
    ):
        target = batch.get(key)
        if target is None or pred is None:
            continue
        mask = ~torch.isnan(target)
        if mask.any():
            if key == "teacher_impact":
                term = F.binary_cross_entropy_with_logits(pred[mask].float(), target[mask])
            else:
                term = ((pred[mask].float() - target[mask]) ** 2).mean()
            losses["distill_" + key.removeprefix("teacher_")] = term
    topics = batch.get("teacher_topics")
    if topics is not None and "topic_logits" in out and topics.shape[-1] == out["topic_logits"].shape[-1]:
        mask = ~torch.isnan(topics)
        if mask.any():
            logits = out["topic_logits"].float()
            losses["distill_topics"] = F.binary_cross_entropy_with_logits(logits[mask], topics[mask])
    return losses
