import gzip
import json

import pandas as pd
import pytest

from inference.readers import BadRow, count_rows, expand_inputs, file_format, read_range


def test_formats_from_names():
    assert file_format("a.jsonl.gz") == "jsonl" and file_format("b.JSONL.zst") == "jsonl"
    assert file_format("c.parquet") == "parquet" and file_format("d.csv") == "csv"
    with pytest.raises(ValueError, match="unknown input format"):
        file_format("e.txt")


def test_jsonl_ranges_skip_blank_lines_and_report_bad_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1}\n\n{"id": 2}\n{bad\n[1]\n{"id": "\xff"}\n')
    assert count_rows(str(path)) == 5
    rows = list(read_range(str(path), 1, 5))
    assert [n for n, _ in rows] == [1, 2, 3, 4]
    assert rows[0][1] == {"id": 2}
    assert isinstance(rows[1][1], BadRow) and "malformed JSON" in rows[1][1].reason
    assert "not an object" in rows[2][1].reason and "UTF-8" in rows[3][1].reason


def test_compressed_jsonl(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    payload = "\n".join(json.dumps({"id": i}) for i in range(7)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(payload))
    for name in ("a.jsonl.gz", "b.jsonl.zst"):
        assert count_rows(str(tmp_path / name)) == 7
        assert [r["id"] for _, r in read_range(str(tmp_path / name), 2, 5)] == [2, 3, 4]


def test_parquet_ranges_cross_row_groups(tmp_path):
    df = pd.DataFrame({"id": range(100), "text": [f"t{i}" for i in range(100)]})
    df.to_parquet(tmp_path / "a.parquet", row_group_size=7)
    assert count_rows(str(tmp_path / "a.parquet")) == 100
    got = list(read_range(str(tmp_path / "a.parquet"), 10, 30))
    assert [n for n, _ in got] == list(range(10, 30)) and [r["id"] for _, r in got] == list(range(10, 30))


def test_csv_with_quoted_newlines(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"line one\nline two"\n2,plain\n')
    assert count_rows(str(tmp_path / "a.csv")) == 2
    assert [r["text"] for _, r in read_range(str(tmp_path / "a.csv"), 0, 2)] == [
        "line one\nline two",
        "plain",
    ]


def test_expand_inputs_sorts_and_dedupes(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        (tmp_path / name).write_text("{}\n")
    files = expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl"]
    assert expand_inputs([str(tmp_path / "*.parquet")]) == []
