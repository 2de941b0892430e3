"""A scoring job's output files from the worker's side: the part writer (a row group per window, renamed
into place when the unit is done), what a part holds (``Counts``), and the progress every worker publishes
(one bar over the job's units on the first worker).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from inference import jobs
from training.records import record_schema


def _table(records: list[dict[str, Any]], keep_columns: list[str], embedding: bool = False) -> pa.Table:
    keep_fields = []
    for col in keep_columns:
        try:
            keep_fields.append(pa.field(col, pa.array([r.get(col) for r in records]).type))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Mixed types in a passed-through column: keep them as JSON text rather than fail the unit.
            for r in records:
                r[col] = json.dumps(r.get(col), default=str)
            keep_fields.append(pa.field(col, pa.string()))
    return pa.Table.from_pylist(records, schema=record_schema(keep_fields, embedding))


class PartWriter:
    """Streams a part's records into a temporary parquet file (a row group per window), then renames it.


    Memory stays bounded by the window, not the unit. Kept columns take their type from the first
    window; later values of a text-typed kept column are stored as JSON text.
    """

    def __init__(self, part: Path, keep_columns: list[str], embedding: bool = False):
        self.part = part
        self.embedding = embedding
        self.tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}")
        self.keep = keep_columns
        self.writer: pq.ParquetWriter | None = None

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.writer is None:
            table = _table(records, self.keep, self.embedding)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        else:
            schema = self.writer.schema
            for col in self.keep:
                if schema.field(col).type == pa.string():
                    for r in records:
                        if r.get(col) is not None and not isinstance(r[col], str):
                            r[col] = json.dumps(r[col], default=str)
            try:
                table = pa.Table.from_pylist(records, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise ValueError(
                    f"inference.keep_columns: a kept column changes type inside one work unit ({err}); "
                    "drop it from keep_columns or make its values one type"
                ) from None
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:
            pq.write_table(_table([], self.keep, self.embedding), self.tmp)
        else:
            self.writer.close()

    def commit(self) -> None:
        self.tmp.replace(self.part)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


class Progress:
    """A bar over the job's units with every worker's articles/s: each worker publishes its counts in
    output_dir/_progress/, the bar reads them (one bar per torchrun job, on rank 0)."""

    def __init__(self, out: Path, worker: str, total_units: int, enabled: bool):
        self.out = out
        self.dir = out / "_progress"
        self.dir.mkdir(exist_ok=True)
        self.worker = worker
        self.rows = self.tokens = 0
        self.last = 0.0
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_units, unit="unit", desc="scoring", dynamic_ncols=True, file=sys.stderr
            )
            self.bar.n = len(os.listdir(out / jobs.DONE))
            self.bar.refresh()

    def add(self, rows: int, tokens: int, force: bool = False) -> None:
        self.rows += rows
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last < 1.0 and not force:
            return
        self.last = now
        jobs.atomic_write_text(
            self.dir / f"{self.worker}.json", json.dumps({"rows": self.rows, "tokens": self.tokens})
        )
        if self.bar is not None:
            rows, tokens = 0, 0
            for other in self.dir.glob("*.json"):
                try:
                    counts = json.loads(other.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                rows += counts["rows"]
                tokens += counts["tokens"]
            elapsed = max(now - self.start, 1e-9)
            self.bar.n = min(len(os.listdir(self.out / jobs.DONE)), self.bar.total or 0)
            self.bar.set_postfix(articles=f"{rows:,}", articles_s=f"{rows / elapsed:,.1f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.add(0, 0, force=True)
            self.bar.close()


@dataclass
class Counts:
    """What a piece, a unit or a worker scored: rows read = scored + errors."""

    rows: int = 0
    scored: int = 0
    errors: int = 0
    chunks: int = 0
    tokens: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


COUNT_KEYS = tuple(f.name for f in fields(Counts))


def _part_counts(out: Path, name: str) -> Counts:
    """Counts of a part (and its errors file) already in place: a resumed stream's earlier parts."""
    part = out / f"part-{name}.parquet"
    scored = pq.ParquetFile(part).metadata.num_rows
    chunks = sum(pq.read_table(part, columns=["n_chunks"]).column(0).to_pylist()) if scored else 0
    err = out / f"errors-{name}.jsonl"
    errors = sum(1 for line in err.read_text().splitlines() if line.strip()) if err.exists() else 0
    return Counts(rows=scored + errors, scored=scored, errors=errors, chunks=chunks)
