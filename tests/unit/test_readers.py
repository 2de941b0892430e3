import csv
import gzip
import io
import json

import fsspec
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference import readers
from inference.readers import BadRow, expand_inputs, file_format, plan_units, read_unit


def _all_rows(paths, unit_rows):
    units = plan_units([str(p) for p in paths], unit_rows)
    return units, [(u, loc, row) for u in units for loc, row in read_unit(u)]


def test_formats_from_names():
    assert file_format("a.jsonl.gz") == "jsonl" and file_format("b.JSONL.zst") == "jsonl"
    assert file_format("c.parquet") == "parquet" and file_format("d.csv") == "csv"
    with pytest.raises(ValueError, match="unknown input format"):
        file_format("e.txt")


def test_jsonl_byte_ranges_skip_blank_lines_and_report_bad_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    body = b'{"id": 1}\n\n{"id": 2}\n{bad\n[1]\n{"id": "\xff"}\n'
    path.write_bytes(body)
    units, rows = _all_rows([path], unit_rows=1)
    assert len(units) > 1 and all(u.kind == "bytes" for u in units)
    assert [loc for _, loc, _ in rows] == [0, 11, 21, 26, 30]  # each record's byte offset, once
    assert [r for _, _, r in rows[:2]] == [{"id": 1}, {"id": 2}]
    assert "malformed JSON" in rows[2][2].reason and "not an object" in rows[3][2].reason
    assert isinstance(rows[4][2], BadRow) and "UTF-8" in rows[4][2].reason


_FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\n;é')), max_size=12)  # no bare CR: a line end to csv


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    width=st.integers(1, 3),  # one column: a boundary cannot be told by field counts, quotes are counted
    unit_rows=st.integers(1, 30),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_csv_byte_ranges_read_every_record_once_with_quoted_newlines(
    tmp_path_factory, data, width, unit_rows, terminator
):
    """However the file is cut, the units together read exactly what csv.DictReader reads."""
    rows = data.draw(st.lists(st.lists(_FIELD, min_size=width, max_size=width), max_size=25))
    path = tmp_path_factory.mktemp("csv") / "a.csv"
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator=terminator)
    writer.writerow(["id", "text", "n"][:width])
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    expected = list(csv.DictReader(io.StringIO(buf.getvalue(), newline="")))
    _, got = _all_rows([path], unit_rows)
    assert [r for _, _, r in got] == expected


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(max_size=30), max_size=30), unit_rows=st.integers(1, 10))
def test_jsonl_byte_ranges_read_every_record_once(tmp_path_factory, texts, unit_rows):
    path = tmp_path_factory.mktemp("jsonl") / "a.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    units, got = _all_rows([path], unit_rows)
    assert [r["id"] for _, _, r in got] == list(range(len(texts)))
    for unit, offset, _ in got:  # a record belongs to the unit its first byte is in
        assert unit.start <= offset < unit.end


def test_compressed_files_are_one_stream_unit_read_once(tmp_path, monkeypatch):
    zstandard = pytest.importorskip("zstandard")
    payload = "\n".join(json.dumps({"id": i}) for i in range(7)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    opened = []
    original = readers._open_binary
    monkeypatch.setattr(readers, "_open_binary", lambda p: opened.append(p) or original(p))
    units = plan_units([str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl.zst")], unit_rows=2)
    assert [u.kind for u in units] == ["stream", "stream"] and not opened  # planning reads no body
    for unit in units:
        assert [(n, r["id"]) for n, r in read_unit(unit, skip=3)] == [(3, 3), (4, 4), (5, 5), (6, 6)]
    assert len(opened) == 2


def test_parquet_units_are_whole_row_groups_with_only_the_needed_columns(tmp_path):
    df = pd.DataFrame({"id": range(100), "text": [f"t{i}" for i in range(100)], "big": ["x" * 50] * 100})
    df.to_parquet(tmp_path / "a.parquet", row_group_size=7)
    units = plan_units([str(tmp_path / "a.parquet")], unit_rows=20)
    assert [u.end - u.start for u in units] == [21, 21, 21, 21, 16]  # three groups of 7 reach 20 rows
    got = list(read_unit(units[1], columns=["id", "text", "missing"]))
    assert [n for n, _ in got] == list(range(21, 42)) and [r["id"] for _, r in got] == list(range(21, 42))
    assert set(got[0][1]) == {"id", "text"}


def test_planning_reads_one_head_however_many_files(tmp_path, monkeypatch):
    for i in range(30):
        (tmp_path / f"f{i:02d}.jsonl").write_text("".join(json.dumps({"id": j}) + "\n" for j in range(50)))
    opened = []
    original = fsspec.open
    monkeypatch.setattr(readers.fsspec, "open", lambda p, *a, **k: opened.append(p) or original(p, *a, **k))
    units = plan_units(expand_inputs([str(tmp_path / "*.jsonl")]), unit_rows=10)
    assert len(opened) == 1  # the first file's head, for bytes per row
    assert len({u.file_index for u in units}) == 30 and 4 <= len(units) / 30 <= 6


def test_csv_with_quoted_newlines(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"line one\nline two"\n2,plain\n')
    _, got = _all_rows([tmp_path / "a.csv"], unit_rows=1)
    assert [r["text"] for _, _, r in got] == ["line one\nline two", "plain"]


def test_expand_inputs_sorts_and_dedupes(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        (tmp_path / name).write_text("{}\n")
    files = expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl"]
    assert expand_inputs([str(tmp_path / "*.parquet")]) == []
