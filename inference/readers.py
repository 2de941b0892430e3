"""Streaming readers for news archives: jsonl (plain, .gz, .zst), parquet and csv, local or fsspec URLs.

A reader yields ``(row_number, row_or_error)`` for one row range of one file, never the whole file:
``row_or_error`` is a dict for a readable row, or a :class:`BadRow` with the reason it is unreadable
(malformed JSON, invalid UTF-8, not an object). Row numbers are 0-based data rows (jsonl: non-blank
lines; csv: records after the header; parquet: rows).
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec

FORMATS = ("jsonl", "parquet", "csv")


@dataclass
class BadRow:
    reason: str
    raw: str


def file_format(path: str) -> str:
    name = path.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    raise ValueError(f"{path}: unknown input format; use .jsonl[.gz|.zst], .parquet or .csv")


def _open_binary(path: str) -> IO[bytes]:
    raw = fsspec.open(path, "rb").open()
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if lower.endswith((".zst", ".zstd")):
        try:
            import zstandard
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{path}: reading .zst needs the zstandard package (pip install zstandard)"
            ) from err
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader)  # type: ignore[arg-type]  # line iteration needs buffering
    return raw  # type: ignore[no-any-return]


def count_rows(path: str) -> int:
    """Number of data rows in a file (one streaming pass for jsonl/csv, metadata for parquet)."""
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with fsspec.open(path, "rb") as fh:
            return int(pq.ParquetFile(fh).metadata.num_rows)
    if fmt == "csv":
        return sum(1 for _ in _iter_csv(path))
    with _open_binary(path) as fh:
        return sum(1 for line in fh if line.strip())


def _truncate(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _iter_jsonl(path: str) -> Iterator[dict[str, Any] | BadRow]:
    with _open_binary(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield BadRow(f"invalid UTF-8 at byte {err.start}", _truncate(line.decode("utf-8", "replace")))
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                yield BadRow(f"malformed JSON: {err.msg} (column {err.colno})", _truncate(text.rstrip("\n")))
                continue
            if not isinstance(row, dict):
                yield BadRow(
                    f"row is a JSON {type(row).__name__}, not an object", _truncate(text.rstrip("\n"))
                )
                continue
            yield row


def _iter_csv(path: str) -> Iterator[dict[str, Any] | BadRow]:
    import csv

    delimiter = "\t" if path.lower().removesuffix(".gz").endswith(".tsv") else ","
    with _open_binary(path) as fh:
        reader = csv.DictReader(
            io.TextIOWrapper(fh, encoding="utf-8", errors="surrogateescape", newline=""), delimiter=delimiter
        )
        for row in reader:
            bad = [k for k, v in row.items() if isinstance(v, str) and _has_surrogates(v)]
            if bad:
                yield BadRow(
                    f"invalid UTF-8 in column '{bad[0]}'",
                    _truncate(json.dumps(row, default=str, ensure_ascii=True)),
                )
                continue
            if None in row:  # more fields than the header names
                yield BadRow("row has more fields than the header", _truncate(json.dumps(row, default=str)))
                continue
            yield row


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_parquet(path: str, start: int, end: int) -> Iterator[dict[str, Any] | BadRow]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        offset = 0
        for group in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            if offset + n > start and offset < end:
                table = pf.read_row_group(group)
                lo, hi = max(start - offset, 0), min(end - offset, n)
                yield from table.slice(lo, hi - lo).to_pylist()
            offset += n
            if offset >= end:
                break


def read_range(path: str, start: int, end: int) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    """Rows ``start <= row < end`` of ``path`` with their row numbers, streamed."""
    fmt = file_format(path)
    if fmt == "parquet":
        yield from enumerate(_iter_parquet(path, start, end), start=start)
        return
    rows = _iter_jsonl(path) if fmt == "jsonl" else _iter_csv(path)
    for number, row in enumerate(rows):
        if number >= end:
            break
        if number >= start:
            yield number, row


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files matched by globs or listed paths (local or fsspec URLs), sorted and de-duplicated."""
    files: list[str] = []
    for pattern in patterns:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        for p in sorted(paths):
            if fs.isdir(p):
                continue
            files.append(p if protocol == "file" else f"{protocol}://{p}")
    seen: dict[str, None] = {}
    for f in files:
        seen.setdefault(os.path.abspath(f) if "://" not in f else f, None)
    return list(seen)
