"""newsimpact.json through one typed reader: defaults of older files in one place, unknown keys kept."""

from __future__ import annotations

import json

import pytest

from training import model_meta
from training.modeling import read_meta


def _write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / model_meta.META_FILE).write_text(json.dumps(data))
    return folder


def test_an_old_file_gets_the_defaults_and_keeps_unknown_keys(tmp_path):
    old = {"base_model": "m", "schema": {"sentiment_labels": ["negative", "neutral", "positive"]},
           "max_length": 64, "pooling": "mean", "from_the_future": {"x": 1}}  # fmt: skip
    meta = model_meta.read(_write(tmp_path / "old", old))
    assert meta.format == "run" and meta.dtype == "float32" and meta.topic_pooling == "chunk"
    assert meta.label_counts is None and meta.training_data is None and meta.topics == []
    assert meta.stride == 16  # max(16, 64 // 8): one rule for a run's adapter and an export
    assert meta.extra == {"from_the_future": {"x": 1}}
    model_meta.write(tmp_path / "old", meta)
    again = json.loads((tmp_path / "old" / model_meta.META_FILE).read_text())
    assert again["from_the_future"] == {"x": 1} and again["topic_pooling"] == "chunk"
    assert read_meta(tmp_path / "old")["format"] == "run"  # the dict view reads through it too


def test_an_export_says_its_own_stride(tmp_path):
    data = {"base_model": "m", "schema": {"sentiment_labels": ["a", "b"]}, "max_length": 256,
            "chunking": {"max_length": 256, "stride": 40}}  # fmt: skip
    assert model_meta.read(_write(tmp_path / "e", data)).stride == 40
    assert model_meta.default_stride(256) == 32 and model_meta.default_stride(64) == 16


def test_a_folder_without_the_file_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="newsimpact export"):
        model_meta.read(tmp_path)
