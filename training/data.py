"""Canonical rows tokenized and batched (no Lightning here).

Flow: training/sources.py reads each source's split and maps it onto the canonical schema;
:func:`build_splits` mixes the sources (weights, ``max_samples``) and :func:`encode` tokenizes and turns
labels into targets (``-100``/NaN where a row has no label, so that
head's loss is masked); :class:`Collator` pads a batch. ``datasets.map`` caches both steps by fingerprint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from training.config import DataConfig, SchemaConfig
from training.distill import TEACHER_COLUMNS
from training.scale import Scale
from training.sources import (
    _is_missing,
    impact_calibration,
    load_split,
    sentiment_level,
    to_canonical,
    topic_scope,
)
from training.text import normalize
from training.tickers import find_mentions, spans_to_tokens

log = logging.getLogger("newsimpact.data")

IGNORE_INDEX = -100


class _Encoder:
    """Tokenizes canonical rows and builds per-head targets (masked where a label is absent)."""

    def __init__(
        self, tokenizer: Any, schema: SchemaConfig, max_length: int, replace_urls: str | None = None
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.replace_urls = replace_urls
        self.scale = list(schema.sentiment_labels)
        self.ordinal = Scale.of(schema)
        self.topics = list(schema.topics)
        self.scope: set[str] | None = None  # set by encode(): topics outside it stay unlabelled (NaN)
        # part of the ``datasets`` fingerprint (the class's code is not): bump when the targets change, so
        # no cached encoding of an older layout is reused (3: entity bands carry their unit)
        self.targets_version = 3

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        texts = [normalize(t, self.replace_urls) for t in batch["text"]]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
        sentiment_id, sentiment_group, topic_targets, entity_tokens, entity_scores = [], [], [], [], []
        entity_bands = []
        for i, text in enumerate(texts):
            label = batch["sentiment"][i]
            fine, group = (
                self.ordinal.target(label, bool(batch["sentiment_coarse"][i]))
                if label is not None
                else (IGNORE_INDEX, IGNORE_INDEX)
            )
            sentiment_id.append(fine)  # -100 for a coarse label of several classes
            sentiment_group.append(group)
            if batch["has_topics"][i]:
                topic_targets.append(
                    [
                        (1.0 if t in batch["topics"][i] else 0.0)
                        if self.scope is None or t in self.scope
                        else float("nan")
                        for t in self.topics
                    ]
                )
            else:
                topic_targets.append([])
            tokens, scores, bands = [], [], []
            for ent in batch["entities"][i]:
                idx = spans_to_tokens(
                    enc["offset_mapping"][i], find_mentions(text, ent["ticker"], ent["aliases"])
                )
                # A mention cut off by truncation (or not in the text) cannot be pooled: the row keeps its
                # other labels and this entity is skipped.
                if idx:
                    tokens.append(idx)
                    scores.append(ent["sentiment_score"])
                    bands.append(self._band(ent["sentiment_score"], bool(ent.get("coarse"))))
            entity_tokens.append(tokens)
            entity_scores.append(scores)
            entity_bands.append(bands)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "sentiment_id": sentiment_id,
            "sentiment_group": sentiment_group,
            "topic_targets": topic_targets,
            "entity_tokens": entity_tokens,
            "entity_scores": entity_scores,
            "entity_bands": entity_bands,
        }

    def _band(self, score: float | None, coarse: bool) -> list[float]:
        """[low, high, unit] of an entity's target on the score axis.

        [low, high]: the point itself, or for a coarse label the span of its class's labels (five levels:
        "positive" -> [0.5, 1], positive or strongly positive), so a three-class entity label never teaches
        "not strong" (the ticker loss is the distance to the span). ``unit``: the length that counts as one
        step of the label's own scale, read by the loss with ``loss.tickers_coarse_axis``: on the coarse
        classes' axis adjacent classes are one step apart, and on five levels the gap between "neutral" (0)
        and the nearest "positive" (0.5) is 0.5, so distances count double, as a three-label scale's would
        (its step is 1). Fine labels and continuous scores keep unit 1; a three-label scale is unchanged."""
        if score is None or _is_missing(score) or not coarse:
            value = float("nan") if score is None else float(score)
            return [value, value, 1.0]
        points = np.linspace(-1.0, 1.0, len(self.scale))
        members = self.ordinal.members[int(self.ordinal.group_of[int(np.abs(points - score).argmin())])]
        unit = (len(self.ordinal.coarse) - 1) / (len(self.scale) - 1)
        return [float(points[members[0]]), float(points[members[-1]]), unit]


def label_counts(ds: datasets.Dataset, schema: SchemaConfig) -> dict[str, Any]:
    """How many training rows taught each head, each sentiment class and each topic.

    ``topics.<name>``: rows with a topic label (``rows``) and those tagged with it (``positive``); a topic
    no row is tagged with was never taught, and neither was a class no row has. Saved with the run and
    every export (``newsimpact.json`` ``label_counts``), so the scorer can leave such outputs out.
    """
    scale = Scale.of(schema)
    sentiment = [0] * len(schema.sentiment_labels)
    coarse_only = [0] * len(scale.coarse)  # rows that name a coarse class of several labels
    groups = ds["sentiment_group"] if "sentiment_group" in ds.column_names else None
    for i, value in enumerate(ds["sentiment_id"]):
        if value is not None and value >= 0:
            sentiment[value] += 1
        elif groups is not None and groups[i] is not None and groups[i] >= 0:
            coarse_only[groups[i]] += 1
    topic_rows = [0] * len(schema.topics)
    topic_positive = [0] * len(schema.topics)
    for targets in ds["topic_targets"]:
        if targets:
            for i, t in enumerate(targets[: len(schema.topics)]):
                if t == t:  # not NaN: this row is labelled for the topic
                    topic_rows[i] += 1
                    topic_positive[i] += int(t > 0.5)
    return {
        "rows": len(ds),
        "heads": {
            "sentiment": sum(sentiment) + sum(coarse_only),
            "sentiment_score": sum(not _is_missing(v) for v in ds["sentiment_score"]),
            "impact": sum(not _is_missing(v) for v in ds["impact"]),
            "topics": sum(1 for t in ds["topic_targets"] if t),
            "tickers": sum(not _is_missing(v) for s in ds["entity_scores"] for v in s),
        },
        "sentiment": dict(zip(schema.sentiment_labels, sentiment)),
        # rows labelled with a coarse class only (a three-class source on a five-level scale)
        "sentiment_coarse": dict(zip(scale.coarse, coarse_only)),
        "topics": {
            name: {"rows": r, "positive": p} for name, r, p in zip(schema.topics, topic_rows, topic_positive)
        },
    }


MODEL_COLUMNS = [
    "input_ids",
    "attention_mask",
    "sentiment_id",
    "sentiment_group",
    "sentiment_score",
    "impact",
    "topic_targets",
    "entity_tokens",
    "entity_scores",
    "entity_bands",
]


def encode(
    ds: datasets.Dataset,
    tokenizer: Any,
    schema: SchemaConfig,
    max_length: int,
    replace_urls: str | None = None,
    topic_scope: Sequence[str] | None = None,
) -> datasets.Dataset:
    """Tokenize canonical rows into model inputs and masked targets (cached by ``datasets``).

    ``topic_scope``: the topics the source labels (:func:`topic_scope`); None: all."""
    encoder = _Encoder(tokenizer, schema, max_length, replace_urls)
    encoder.scope = set(topic_scope) if topic_scope is not None else None
    encoded = ds.map(encoder, batched=True, desc="tokenize")
    teacher = [c for c in TEACHER_COLUMNS if c in encoded.column_names]  # distill.teacher's targets
    return encoded.select_columns(MODEL_COLUMNS + teacher + ["source"])


def _weighted(ds: datasets.Dataset, weight: float, seed: int) -> datasets.Dataset:
    """Repeat (weight > 1) or subsample (weight < 1) a source's rows; 1.0 keeps each row once."""
    if weight == 1.0 or len(ds) == 0:
        return ds
    rng = np.random.default_rng(seed)
    n = max(1, round(len(ds) * weight))
    whole, rest = divmod(n, len(ds))
    indices = np.concatenate([np.tile(np.arange(len(ds)), whole), rng.permutation(len(ds))[:rest]])
    return ds.select(indices.tolist())


def build_splits(
    data: DataConfig,
    schema: SchemaConfig,
    tokenizer: Any,
    max_length: int,
    only: Sequence[str] | None = None,
    calibrations: Mapping[str, dict[str, Any]] | None = None,
    replace_urls: str | None = None,
    teacher: Any = None,
    seed: int = 13,
) -> dict[str, datasets.Dataset]:
    """Every split (or the ``only`` ones) of every source, canonicalised, encoded and mixed.

    The training split of each source is repeated or subsampled by its ``weight``. ``calibrations``
    (source name -> rank table, as saved with a run) replaces the impact mapping built from the source's
    training rows, so evaluation applies the mapping the model was trained with. ``replace_urls`` is the
    model's text normalisation (:func:`training.text.normalize`). ``teacher``
    (:class:`training.teacher.Teacher`) adds its outputs to every training split as soft targets.
    ``seed``: the run's seed, for ``max_samples`` subsets and source weights.
    """
    per_split: dict[str, list[datasets.Dataset]] = {}
    for name, source in data.sources.items():
        calibration = (calibrations or {}).get(name) or impact_calibration(source)
        wanted = [s for s in source.splits if only is None or s in only]
        raw = {s: load_split(source, source.splits[s]) for s in wanted}
        # one reading of the source's labels for all its splits: from its training rows where loaded
        level = (
            sentiment_level(raw["train"] if "train" in raw else next(iter(raw.values())), source, schema)
            if raw
            else "fine"
        )
        for split_name in wanted:
            ds = to_canonical(raw[split_name], name, source, schema, calibration, level)
            if source.max_samples is not None and len(ds) > source.max_samples:
                ds = ds.shuffle(seed=seed).select(range(source.max_samples))
            if teacher is not None and split_name == "train":
                ds = teacher.attach(ds, name, score=source.distill)
            ds = encode(ds, tokenizer, schema, max_length, replace_urls, topic_scope(source, schema))
            if split_name == "train":
                ds = _weighted(ds, source.weight, seed)
            per_split.setdefault(split_name, []).append(ds)
    return {k: v[0] if len(v) == 1 else datasets.concatenate_datasets(v) for k, v in per_split.items()}


def training_data(data: DataConfig, splits: Sequence[str] = ("train", "validation")) -> dict[str, Any]:
    """What a model learned from, per source: its dataset folder, the splits it trained and selected on,
    their row counts and, for sources with a ``date_column``, the first and last date of those rows
    (``newsimpact.json`` ``training_data``; ``newsimpact signals`` keeps its evaluation off these dates)."""
    out: dict[str, Any] = {}
    for name, source in data.sources.items():
        entry: dict[str, Any] = {
            "dataset": os.path.basename(os.path.normpath(source.root)) if source.root else None,
            "derived": source.derived,
            "splits": {},
        }
        for split_name in splits:
            if split_name not in source.splits:
                continue
            split = source.splits[split_name]
            record: dict[str, Any] = {"path": split.path, "where": dict(split.where or {})}
            if source.date_column:
                ds = load_split(source, split)
                if source.date_column not in ds.column_names:
                    # e.g. the sample config pointed at data of your own without that column: no dates
                    log.warning(
                        "data.sources.%s.date_column='%s' is not a column of %s: its dates are not recorded",
                        name, source.date_column, split.path,
                    )  # fmt: skip
                    entry["splits"][split_name] = {
                        **record,
                        "rows": len(ds),
                        "first_date": None,
                        "last_date": None,
                    }
                    continue
                dates = sorted(str(d)[:10] for d in ds[source.date_column] if d is not None)
                record.update(
                    rows=len(ds),
                    first_date=dates[0] if dates else None,
                    last_date=dates[-1] if dates else None,
                )
            entry["splits"][split_name] = record
        out[name] = entry
    return out


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """A shuffled order in which each run of ``batch_size`` indices has similar lengths.

    Indices are shuffled, cut into mega-batches of ``mega_batches * batch_size``, sorted by length inside
    each, cut into batches, and the batches shuffled: batches stay random, padding mostly disappears
    (the idea of transformers' ``group_by_length``). Under DDP Lightning wraps it in a distributed sampler.

    Not ``transformers.trainer_pt_utils.LengthGroupedSampler``: that one yields each mega-batch sorted
    longest first and in order, so every run of 50 batches walks from long to short rows (a length trend
    inside each epoch) and always opens with the longest batch; and it reshuffles from a generator's
    running state, where this one is a pure function of ``seed + epoch`` (``set_epoch``), so a resumed
    run sees the same order as an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batches: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega_batches * batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=gen).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(perm), self.mega):
            chunk = sorted(perm[start : start + self.mega], key=self.lengths.__getitem__, reverse=True)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=gen).tolist():
            yield from batches[b]


class Collator:
    """Pads a list of encoded rows into a batch of tensors.

    Targets absent for a row are ``-100`` (sentiment) or NaN (regressions, topics, tickers); the loss
    masks them. Ticker mentions become ``entity_mask[b, e, t]`` (E = most entities in any row).
    """

    def __init__(self, pad_token_id: int, n_topics: int, pad_to_multiple_of: int = 1):
        self.pad_token_id = pad_token_id
        self.n_topics = n_topics
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch_size = len(rows)
        length = max(len(r["input_ids"]) for r in rows)
        length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n_entities = max((len(r.get("entity_tokens") or []) for r in rows), default=0)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        entity_mask = torch.zeros((batch_size, n_entities, length), dtype=torch.bool)
        entity_scores = torch.full((batch_size, n_entities), float("nan"))
        entity_bands = torch.full((batch_size, n_entities, 3), float("nan"))  # low, high, unit
        topics = torch.full((batch_size, self.n_topics), float("nan"))
        for b, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[b, :n] = torch.as_tensor(row["input_ids"])
            attention_mask[b, :n] = torch.as_tensor(row["attention_mask"])
            for e, tokens in enumerate(row.get("entity_tokens") or []):
                entity_mask[b, e, tokens] = True
                entity_scores[b, e] = float(row["entity_scores"][e])
                bands = row.get("entity_bands")
                band = list(bands[e]) if bands else [entity_scores[b, e].item()] * 2
                entity_bands[b, e] = torch.as_tensor((band + [1.0])[:3])  # older caches: no unit
            if row.get("topic_targets"):
                topics[b] = torch.as_tensor(row["topic_targets"])
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "entity_mask": entity_mask,
            "entity_scores": entity_scores,
            "entity_bands": entity_bands,
            "topic_targets": topics,
        }
        if "row_index" in rows[0]:
            batch["row_index"] = torch.tensor([r["row_index"] for r in rows], dtype=torch.long)
        if "teacher_probs" in rows[0]:  # distillation targets (training rows only); NaN where none
            for key in TEACHER_COLUMNS:
                if key in rows[0]:
                    batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
        if "sentiment_id" in rows[0]:
            batch["sentiment_id"] = torch.tensor([r["sentiment_id"] for r in rows], dtype=torch.long)
            batch["sentiment_group"] = torch.tensor(
                [r.get("sentiment_group", IGNORE_INDEX) for r in rows], dtype=torch.long
            )
            for key in ("sentiment_score", "impact"):
                batch[key] = torch.tensor(
                    [float("nan") if r[key] is None else r[key] for r in rows], dtype=torch.float32
                )
        return batch
