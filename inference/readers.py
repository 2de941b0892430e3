"""Streaming readers for news archives: jsonl (plain, .gz, .zst), parquet and csv, local or fsspec URLs.

Files are cut into work units without reading their bodies (docs/DESIGN.md section 6), and a unit's reading cost
is proportional to its own size:

- ``bytes``: plain jsonl/csv, a byte range ``[start, end)``. Like a Hadoop/Spark input split, a unit owns
  the records that *start* inside its range: it seeks to its start, skips the rest of the record that
  straddles it and reads on past its end to finish its last record. For csv a record may span lines
  (quoted newlines): the record boundary after ``start`` depends on the quote state there, which the
  unit decides by parsing under both states (see :func:`_csv_first_record`).
- ``rows``: parquet, whole row groups (from the footer), read with only the needed columns.
- ``stream``: compressed files, one unit per file, decompressed once from the front; the scorer cuts
  its output into a part per ``unit_rows`` rows, so a killed stream resumes after its last whole part.

A reader yields ``(location, row_or_error)``: ``location`` is the byte offset of the record (``bytes``)
or its 0-based row number (``rows``, ``stream``: jsonl counts non-blank lines, csv records after the
header); ``row_or_error`` is a dict for a readable row, or a :class:`BadRow` with the reason it is
unreadable (malformed JSON, invalid UTF-8, not an object, too many csv fields).
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec

FORMATS = ("jsonl", "parquet", "csv")
COMPRESSED = (".gz", ".zst", ".zstd")
# Bytes per row are estimated from this much of the first plain file's head: the only body bytes planning
# reads, once per job however many files there are.
SAMPLE_BYTES = 1 << 16
# How far a csv unit looks for the record boundary after its start under either quote state, and how many
# records after a candidate boundary must have the header's field count.
CSV_PROBE_BYTES = 1 << 20
CSV_PROBE_RECORDS = 32


@dataclass
class BadRow:
    reason: str
    raw: str


@dataclass
class Unit:
    """A piece of one input file that one worker scores; named ``{file_index:05d}-{index:05d}``."""

    file_index: int
    path: str
    index: int
    kind: str  # bytes | rows | stream
    start: int  # bytes: first byte; rows: first row; stream: 0
    end: int  # bytes: end byte; rows: end row; stream: the compressed size
    cost: int  # bytes the unit reads (parquet: compressed size of its row groups); biggest are claimed first

    @property
    def name(self) -> str:
        return f"{self.file_index:05d}-{self.index:05d}"


def file_format(path: str) -> str:
    name = path.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    raise ValueError(f"{path}: unknown input format; use .jsonl[.gz|.zst], .parquet or .csv")


def is_compressed(path: str) -> bool:
    return path.lower().endswith(COMPRESSED)


def _delimiter(path: str) -> str:
    name = path.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    return "\t" if name.endswith(".tsv") else ","


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


# -- planning -----------------------------------------------------------------------------------------
def plan_units(files: list[str], unit_rows: int) -> list[Unit]:
    """Cut every file into units from its size (plain, compressed) or its footer (parquet)."""
    units: list[Unit] = []
    row_bytes: float | None = None
    for f, path in enumerate(files):
        fmt = file_format(path)
        if fmt == "parquet":
            units.extend(_parquet_units(f, path, unit_rows))
            continue
        size = int(fsspec.filesystem(fsspec.utils.get_protocol(path)).size(path))
        if is_compressed(path):
            units.append(Unit(f, path, 0, "stream", 0, size, size))
            continue
        if row_bytes is None:
            row_bytes = _bytes_per_row(path)
        step = max(1, int(row_bytes * unit_rows))
        starts = range(0, max(size, 1), step)
        for u, start in enumerate(starts):
            end = min(start + step, size)
            units.append(Unit(f, path, u, "bytes", start, end, end - start))
    return units


def _bytes_per_row(path: str) -> float:
    with fsspec.open(path, "rb") as fh:
        head = fh.read(SAMPLE_BYTES)
    lines = [line for line in head.split(b"\n")[:-1] if line.strip()] or [head]
    return max(1.0, sum(len(line) + 1 for line in lines) / len(lines))


def _parquet_units(f: int, path: str, unit_rows: int) -> list[Unit]:
    """Consecutive whole row groups of about ``unit_rows`` rows (a bigger group is a unit of its own)."""
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
        meta = pq.ParquetFile(fh).metadata
    units: list[Unit] = []
    start = rows = cost = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        rows += group.num_rows
        cost += group.total_byte_size
        if rows - start >= unit_rows:
            units.append(Unit(f, path, len(units), "rows", start, rows, cost))
            start, cost = rows, 0
    if rows > start or not units:
        units.append(Unit(f, path, len(units), "rows", start, rows, cost))
    return units


# -- reading ------------------------------------------------------------------------------------------
def read_unit(unit: Unit, columns: list[str] | None = None, skip: int = 0) -> Iterator[tuple[int, Any]]:
    """The rows of one unit with their locations, streamed. ``columns``: what parquet needs to read;
    ``skip``: rows of a stream unit already scored (a resumed stream)."""
    fmt = file_format(unit.path)
    if unit.kind == "rows":
        yield from _parquet_rows(unit.path, unit.start, unit.end, columns)
    elif unit.kind == "stream":
        rows = _jsonl_rows(_lines(unit.path)) if fmt == "jsonl" else _csv_stream(unit.path)
        for number, row in enumerate(rows):
            if number >= skip:
                yield number, row
    elif fmt == "jsonl":
        yield from _jsonl_range(unit.path, unit.start, unit.end)
    else:
        yield from _csv_range(unit.path, unit.start, unit.end)


def _truncate(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def _parse_json_line(line: bytes) -> dict[str, Any] | BadRow:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRow(f"invalid UTF-8 at byte {err.start}", _truncate(line.decode("utf-8", "replace")))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        return BadRow(f"malformed JSON: {err.msg} (column {err.colno})", _truncate(text.rstrip("\r\n")))
    if not isinstance(row, dict):
        return BadRow(f"row is a JSON {type(row).__name__}, not an object", _truncate(text.rstrip("\r\n")))
    return row


def _lines(path: str) -> Iterator[bytes]:
    with _open_binary(path) as fh:
        yield from fh


def _jsonl_rows(lines: Iterable[bytes]) -> Iterator[dict[str, Any] | BadRow]:
    for line in lines:
        if line.strip():
            yield _parse_json_line(line)


def _records_from(fh: IO[bytes], pos: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Lines of ``fh`` from ``pos`` that start before ``end``, with their offsets."""
    while pos < end:
        line = fh.readline()
        if not line:
            return
        yield pos, line
        pos += len(line)


def _seek_line_start(fh: IO[bytes], start: int) -> int:
    """Position ``fh`` at the first line start >= ``start`` and return it."""
    if start == 0:
        fh.seek(0)
        return 0
    fh.seek(start - 1)
    fh.readline()  # the line straddling start (or ending right before it) belongs to the unit before
    return fh.tell()


def _jsonl_range(path: str, start: int, end: int) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    # JSON strings cannot hold a raw newline, so every line start is a record start.
    with fsspec.open(path, "rb") as fh:
        pos = _seek_line_start(fh, start)
        for offset, line in _records_from(fh, pos, end):
            if line.strip():
                yield offset, _parse_json_line(line)


# -- csv ----------------------------------------------------------------------------------------------
def _csv_fields(record: bytes, delimiter: str) -> list[str] | BadRow:
    try:
        text = record.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRow(f"invalid UTF-8 at byte {err.start}", _truncate(record.decode("utf-8", "replace")))
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    return rows[0] if rows else []


def _csv_row(header: list[str], record: bytes, delimiter: str) -> dict[str, Any] | BadRow | None:
    """A record as a dict keyed by the header (missing trailing fields: None); None for a blank line."""
    fields = _csv_fields(record, delimiter)
    if isinstance(fields, BadRow):
        return fields
    if not fields:
        return None
    if len(fields) > len(header):
        return BadRow("row has more fields than the header", _truncate(record.decode("utf-8", "replace")))
    return dict(zip(header, fields + [None] * (len(header) - len(fields))))  # type: ignore[list-item]


def _csv_records(lines: Iterable[tuple[int, bytes]], odd: bool = False) -> Iterator[tuple[int, bytes]]:
    """Join physical lines into csv records: a record ends at a line end with an even quote count so far
    (RFC 4180: a quote inside a quoted field is doubled, so parity says whether we are inside quotes).
    ``odd``: the lines start inside a quoted field."""
    parts: list[bytes] = []
    first = 0
    for offset, line in lines:
        if not parts:
            first = offset
        parts.append(line)
        odd ^= bool(line.count(b'"') & 1)
        if not odd:
            yield first, b"".join(parts)
            parts = []
    if parts:
        yield first, b"".join(parts)


def _csv_header(fh: IO[bytes], delimiter: str) -> tuple[list[str], int]:
    fh.seek(0)
    records = _csv_records(_records_from(fh, 0, 1 << 62))
    first = next(records, None)
    if first is None:
        return [], 0
    fields = _csv_fields(first[1], delimiter)
    header = fields if isinstance(fields, list) else []
    return header, first[0] + len(first[1])


def _csv_first_record(fh: IO[bytes], start: int, n_fields: int, delimiter: str, floor: int) -> int:
    """Offset of the first csv record that starts at or after ``start`` (``floor``: where the body starts).

    Walking the lines from ``start - 1``, a line end is a record boundary iff the quote parity read so far
    equals the (unknown) quote state before ``start - 1``. So there are two candidates: the first line
    end with even parity (state "outside") and the first with odd parity ("inside"). The candidate whose
    next records all have the header's field count wins; when both or neither do, the quotes before
    ``start - 1`` are counted (one streamed ``bytes.count`` pass: the exact answer).
    """
    fh.seek(start - 1)
    candidates: dict[bool, int] = {}
    pos, odd = start - 1, False
    while len(candidates) < 2 and pos - start < CSV_PROBE_BYTES:
        line = fh.readline()
        if not line:
            break
        pos += len(line)
        odd ^= bool(line.count(b'"') & 1)
        candidates.setdefault(odd, pos)
    # A lone candidate: every probed line after the first has an even quote count, so the other state
    # would mean a quoted field running on past the probe (over a MiB) or to the end of the file.
    # One column says nothing about plausibility: count.
    valid = [off for off in candidates.values() if _csv_plausible(fh, off, n_fields, delimiter)]
    if len(valid) == 1 and n_fields >= 2:
        return valid[0]
    fh.seek(floor)
    quotes, left = 0, start - 1 - floor
    while left > 0:
        block = fh.read(min(left, 1 << 20))
        if not block:
            break
        quotes += block.count(b'"')
        left -= len(block)
    inside = bool(quotes & 1)
    if inside in candidates:
        return candidates[inside]
    fh.seek(pos)  # the boundary is further on than the probe looked: walk on with the known state
    for offset, record in _csv_records(_records_from(fh, pos, 1 << 62), odd=odd ^ inside):
        return offset + len(record)
    return pos


def _csv_plausible(fh: IO[bytes], offset: int, n_fields: int, delimiter: str) -> bool:
    fh.seek(offset)
    records = _csv_records(_records_from(fh, offset, 1 << 62))
    for _, record in itertools.islice(records, CSV_PROBE_RECORDS):
        fields = _csv_fields(record, delimiter)
        if isinstance(fields, BadRow) or (fields and len(fields) != n_fields):
            return False
    return True


def _csv_range(path: str, start: int, end: int) -> Iterator[tuple[int, dict[str, Any] | BadRow]]:
    delimiter = _delimiter(path)
    with fsspec.open(path, "rb") as fh:
        header, body = _csv_header(fh, delimiter)
        pos = body if start <= body else _csv_first_record(fh, start, len(header), delimiter, body)
        if pos >= end:
            return
        fh.seek(pos)
        # A unit reads on past its end to finish the record that starts before it.
        for offset, record in _csv_records(_records_from(fh, pos, 1 << 62)):
            if offset >= end:
                return
            row = _csv_row(header, record, delimiter)
            if row is not None:
                yield offset, row


def _csv_stream(path: str) -> Iterator[dict[str, Any] | BadRow]:
    delimiter = _delimiter(path)
    with _open_binary(path) as fh:
        records = _csv_records((0, line) for line in fh)
        first = next(records, None)
        if first is None:
            return
        fields = _csv_fields(first[1], delimiter)
        header = fields if isinstance(fields, list) else []
        for _, record in records:
            row = _csv_row(header, record, delimiter)
            if row is not None:
                yield row


# -- parquet ------------------------------------------------------------------------------------------
def _parquet_rows(
    path: str, start: int, end: int, columns: list[str] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        meta = pf.metadata
        groups, offset, first = [], 0, None
        for g in range(meta.num_row_groups):
            if start <= offset < end:
                groups.append(g)
                first = offset if first is None else first
            offset += meta.row_group(g).num_rows
        if not groups:
            return
        names = set(pf.schema_arrow.names)
        wanted = None if columns is None else [c for c in dict.fromkeys(columns) if c in names]
        number = first or 0
        for batch in pf.iter_batches(batch_size=1024, row_groups=groups, columns=wanted):
            for row in batch.to_pylist():
                yield number, row
                number += 1


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
