"""Labelled sources onto the canonical schema (no tokenizer, no Lightning here).

:func:`load_split` reads one split of one source with ``datasets`` (local jsonl/csv/parquet or a hub id);
:func:`to_canonical` maps its columns and label names onto the canonical schema of docs/DESIGN.md section 2
(a source's own labels read on the configured scale: :func:`sentiment_level`), with its entities (an entity
table's names) and its impact (``impact_from_return``: :func:`impact_calibration`). training/data.py then
tokenizes and batches the canonical rows.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from training.config import DataConfig, SchemaConfig, SourceConfig, SplitConfig, source_split_files
from training.markets import apply_calibration, build_calibration
from training.scale import Scale

log = logging.getLogger("newsimpact.data")

_EXT_FORMATS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".gz": "json",
    ".zst": "json",
}

CANONICAL_FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "sentiment": datasets.Value("string"),
        "sentiment_coarse": datasets.Value("bool"),  # the label names a coarse class (training/scale.py)
        "sentiment_score": datasets.Value("float32"),
        "impact": datasets.Value("float32"),
        "topics": datasets.Sequence(datasets.Value("string")),
        "has_topics": datasets.Value("bool"),
        "entities": [
            {
                "ticker": datasets.Value("string"),
                "sentiment_score": datasets.Value("float32"),
                "aliases": datasets.Sequence(datasets.Value("string")),
                # the score is a coarse class's point (a three-class label on a five-level scale): it
                # teaches the class's band of the score axis, not that one point (_Encoder)
                "coarse": datasets.Value("bool"),
            }
        ],
        "source": datasets.Value("string"),
    }
)


def _format_of(source: SourceConfig, files: Sequence[str]) -> str:
    return source.format or _format_of_file(files[0])


def _format_of_file(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _EXT_FORMATS:
        raise ValueError(f"cannot tell the format of {path}; set the source's format to json, csv or parquet")
    return _EXT_FORMATS[ext]


def load_split(source: SourceConfig, split: SplitConfig) -> datasets.Dataset:
    """Read one split of one source and apply its ``where`` filter."""
    if source.format == "hub":
        ds = datasets.load_dataset(source.root, split=split.path)
    else:
        if source.derived:
            from training.derived import ensure

            ensure(source.derived, source.root)  # built on first use (training/derived.py)
        files = source_split_files(source, split)
        ds = datasets.load_dataset(_format_of(source, files), data_files=files, split="train")
    assert isinstance(ds, datasets.Dataset)
    if split.where:
        for column in split.where:
            if column not in ds.column_names:
                raise ValueError(
                    f"where: column '{column}' is not in {split.path} (columns: {ds.column_names})"
                )
        conditions = dict(split.where)
        ds = ds.filter(lambda row: all(row[c] == v for c, v in conditions.items()))
    if source.text_lines:
        ds = _lines(ds, source.columns["text"])
    return ds


_RETWEET = re.compile(r"^RT @\w+:\s*")


def _lines(ds: datasets.Dataset, column: str) -> datasets.Dataset:
    """One row per distinct non-empty line of ``column`` (a retweet counts as the text it repeats), in
    first-seen order; the other columns are dropped (``text_lines`` sources are text only)."""
    seen: set[str] = set()
    lines: list[str] = []
    for value in ds[column]:
        for line in (value or "").splitlines():
            line = line.strip()
            key = _RETWEET.sub("", line)
            if key and key not in seen:
                seen.add(key)
                lines.append(line)
    return datasets.Dataset.from_dict({column: lines})


def label_score(label: str, scale: Sequence[str]) -> float:
    """Position of ``label`` on the ordinal scale mapped linearly onto [-1, 1]."""
    return 2.0 * scale.index(label) / (len(scale) - 1) - 1.0


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Canonicalizer:
    """Maps one batch of a source onto the canonical columns. A class so ``datasets`` can fingerprint it."""

    def __init__(
        self,
        name: str,
        source: SourceConfig,
        schema: SchemaConfig,
        impact_calibration: dict[str, Any] | None = None,
        level: str = "fine",
    ):
        self.name = name
        self.level = level  # coarse | fine (resolved from auto by sentiment_level)
        self.from_score = source.sentiment_from_score
        self.ordinal = Scale.of(schema)
        self.columns = dict(source.columns)
        self.impact_from_return = source.impact_from_return
        self.impact_calibration = impact_calibration
        self.label_map = {str(k): v for k, v in source.label_map.items()}
        self.topic_map = {str(k): v for k, v in source.topic_map.items()}
        self.scale = list(schema.sentiment_labels)
        self.topics = set(schema.topics)
        self.entity_lookup = load_entity_table(source) if source.entity_table else {}

    def _label(self, value: Any, key: str) -> str | None:
        if _is_missing(value) or value == "":
            return None
        label = self.label_map.get(str(value), str(value))
        if label not in self.scale and (key != "sentiment" or label not in self.ordinal.coarse):
            raise ValueError(
                f"data.sources.{self.name}: label '{value}' in column '{self.columns[key]}' is not on the scale "
                f"{self.scale}; map it with data.sources.{self.name}.label_map"
            )
        return label

    def _sentiment(self, batch: dict[str, list[Any]], i: int) -> tuple[str | None, bool]:
        """A row's label and whether it names a coarse class."""
        cols = self.columns
        if self.from_score:
            score = batch[cols["sentiment_score"]][i]
            if not _is_missing(score):
                return self.ordinal.label_from_score(float(score)), False
        if "sentiment" not in cols:
            return None, False
        label = self._label(batch[cols["sentiment"]][i], "sentiment")
        if label is None:
            return None, False
        coarse = label in self.ordinal.coarse and (self.level == "coarse" or label not in self.scale)
        return label, coarse

    def _topics(self, value: Any) -> list[str] | None:
        if _is_missing(value):
            return None
        raw = [value] if isinstance(value, str | int) else list(value)
        mapped = [self.topic_map.get(str(t), str(t)) for t in raw]
        unknown = [t for t in mapped if t not in self.topics]
        if unknown:
            raise ValueError(
                f"data.sources.{self.name}: topics {unknown} are not in schema.topics; "
                f"map them with data.sources.{self.name}.topic_map or add them to schema.topics"
            )
        return mapped

    def _resolve(self, entity: dict[str, Any]) -> dict[str, Any]:
        """An entity named as in the text gets its ticker and all its names from the entity table."""
        hit = self.entity_lookup.get(entity["ticker"].strip().lower())
        if hit is None:
            return entity
        ticker, names = hit
        aliases = list(dict.fromkeys([entity["ticker"], *entity["aliases"], *names]))
        return {**entity, "ticker": ticker, "aliases": [a for a in aliases if a != ticker]}

    def _entities(self, batch: dict[str, list[Any]], i: int) -> list[dict[str, Any]]:
        entities = self._raw_entities(batch, i)
        return [self._resolve(e) for e in entities] if self.entity_lookup else entities

    def _raw_entities(self, batch: dict[str, list[Any]], i: int) -> list[dict[str, Any]]:
        cols = self.columns
        if "entities" in cols:
            raw = batch[cols["entities"]][i] or []
            return [
                {
                    "ticker": str(e["ticker"]),
                    "sentiment_score": float("nan")
                    if _is_missing(e.get("sentiment_score"))
                    else e["sentiment_score"],
                    "aliases": list(e.get("aliases") or []),
                    "coarse": False,
                }
                for e in raw
            ]
        if "ticker" not in cols or _is_missing(batch[cols["ticker"]][i]):
            return []
        score, coarse = float("nan"), False
        if "ticker_score" in cols and not _is_missing(batch[cols["ticker_score"]][i]):
            score = float(batch[cols["ticker_score"]][i])
        elif "ticker_sentiment" in cols:
            label = self._label(batch[cols["ticker_sentiment"]][i], "ticker_sentiment")
            score = float("nan") if label is None else label_score(label, self.scale)
            coarse = label is not None and self.level == "coarse" and self.ordinal.refines
        aliases = list(batch[cols["ticker_aliases"]][i] or []) if "ticker_aliases" in cols else []
        ticker = str(batch[cols["ticker"]][i])
        return [{"ticker": ticker, "sentiment_score": score, "aliases": aliases, "coarse": coarse}]

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        cols = self.columns
        n = len(batch[cols["text"]])
        out: dict[str, list[Any]] = {k: [] for k in CANONICAL_FEATURES}
        for i in range(n):
            text = batch[cols["text"]][i]
            out["text"].append(text if isinstance(text, str) else "")
            label, coarse = self._sentiment(batch, i)
            out["sentiment"].append(label)
            out["sentiment_coarse"].append(coarse)
            for key in ("sentiment_score", "impact"):
                value = batch[cols[key]][i] if key in cols else None
                out[key].append(float("nan") if value is None or _is_missing(value) else float(value))
            if self.impact_calibration is not None and self.impact_from_return:
                ret = batch[self.impact_from_return][i]
                out["impact"][-1] = (
                    float("nan")
                    if _is_missing(ret)
                    else float(apply_calibration(np.array([abs(ret)]), self.impact_calibration)[0])
                )
            topics = self._topics(batch[cols["topics"]][i]) if "topics" in cols else None
            out["topics"].append(topics or [])
            out["has_topics"].append(topics is not None)
            out["entities"].append(self._entities(batch, i))
            out["source"].append(self.name)
        return out


def load_entity_table(source: SourceConfig) -> dict[str, tuple[str, list[str]]]:
    """``entity_table`` as a lookup from every lower-cased name (and ticker) to (ticker, names).

    A name shared by several tickers keeps the first; the table is small (thousands of rows).
    """
    table = source.entity_table
    assert table is not None
    path = os.path.join(source.root, table.path)
    ds = datasets.load_dataset(_format_of_file(path), data_files=[path], split="train")
    for column in (table.ticker, table.aliases):
        if column not in ds.column_names:
            raise ValueError(
                f"entity_table: column '{column}' is not in {path} (columns: {ds.column_names}); "
                "set entity_table.ticker / entity_table.aliases"
            )
    lookup: dict[str, tuple[str, list[str]]] = {}
    for ticker, names in zip(ds[table.ticker], ds[table.aliases], strict=True):
        if _is_missing(ticker):
            continue
        names = [names] if isinstance(names, str) else [n for n in names or [] if isinstance(n, str)]
        for key in [str(ticker), *names]:
            lookup.setdefault(key.strip().lower(), (str(ticker), names))
    return lookup


def impact_calibrations(data: DataConfig) -> dict[str, dict[str, Any]]:
    """The impact rank table of every ``impact_from_return`` source, by source name."""
    tables = {name: impact_calibration(source) for name, source in data.sources.items()}
    return {name: table for name, table in tables.items() if table is not None}


def impact_calibration(source: SourceConfig) -> dict[str, Any] | None:
    """Rank table of |return| over the source's training rows, for ``impact_from_return`` sources."""
    if not source.impact_from_return:
        return None
    train = load_split(source, source.splits["train"])
    if source.impact_from_return not in train.column_names:
        raise ValueError(
            f"impact_from_return: column '{source.impact_from_return}' is not in the training split"
        )
    values = np.abs(
        np.array([v for v in train[source.impact_from_return] if not _is_missing(v)], dtype=float)
    )
    return build_calibration(values, 1001)


def sentiment_level(ds: datasets.Dataset, source: SourceConfig, schema: SchemaConfig) -> str:
    """``coarse`` or ``fine``: the source's ``sentiment_level``, or for ``auto`` what its labels in ``ds``
    say (article and entity labels) -- coarse when every one names a coarse class (a three-class source),
    fine otherwise."""
    if source.sentiment_level != "auto":
        return source.sentiment_level
    columns = [
        source.columns[key]
        for key in ("sentiment", "ticker_sentiment")
        if key in source.columns and source.columns[key] in ds.column_names
    ]
    if not columns:
        return "fine"
    label_map = {str(k): v for k, v in source.label_map.items()}
    labels = {
        label_map.get(str(v), str(v))
        for column in columns
        for v in ds.unique(column)
        if not _is_missing(v) and v != ""
    }
    coarse = set(Scale.of(schema).coarse)
    return "coarse" if labels and labels <= coarse else "fine"


def to_canonical(
    ds: datasets.Dataset,
    name: str,
    source: SourceConfig,
    schema: SchemaConfig,
    calibration: dict[str, Any] | None = None,
    level: str | None = None,
) -> datasets.Dataset:
    """Map a raw source split onto the canonical schema; rows without text are dropped. ``level``: how to
    read its sentiment labels (:func:`sentiment_level`; null: decided from this split)."""
    missing = [col for col in source.columns.values() if col not in ds.column_names]
    if missing:
        raise ValueError(
            f"data.sources.{name}.columns names {missing}, which are not in the data (columns: {ds.column_names})"
        )
    mapped = ds.map(
        _Canonicalizer(name, source, schema, calibration, level or sentiment_level(ds, source, schema)),
        batched=True,
        remove_columns=ds.column_names,
        features=CANONICAL_FEATURES,
        desc=f"canonical schema ({name})",
    )
    return mapped.filter(lambda row: bool(row["text"].strip()), desc=f"drop empty text ({name})")


def topic_scope(source: SourceConfig, schema: SchemaConfig) -> list[str] | None:
    """The schema topics a source labels; None: all of them."""
    if source.topic_scope is not None:
        return list(source.topic_scope)
    if source.topic_map:
        return [t for t in schema.topics if t in set(source.topic_map.values())]
    return None
