"""Derived sources (training/derived.py): built on first use from the public data, cached by version."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import compose_train
from training import derived
from training.config import ConfigError
from training.config_checks import validate_train_config

TWEETS = [
    "Nvidia raises full-year outlook as AI data center chips sell out",
    "Acme Q3 net profit rose 40% on cloud sales",
    "Fed holds rates steady, signals patience",
    "Oil slips as inventories build",
    "Widget Co names new chief financial officer",
    "Generative AI startup files for IPO",
    "Bank of X cuts guidance for fiscal 2024",
    "Stocks close higher led by tech",
] * 6
CLASSES = ["Earnings", "Earnings", "Fed | Central Banks", "Energy | Oil", "Personnel Change", "IPO",
           "Earnings", "Markets"] * 6  # fmt: skip


def _fake_data(root: Path) -> Path:
    """The five input datasets with the columns the builder reads, a few dozen rows each."""
    # each rule fires on a few texts; the builder draws twice as many where none fires
    texts = [f"{t} ({i})" for i, t in enumerate(TWEETS)] + [
        f"Stocks close higher, day {i}" for i in range(200)
    ]
    classes = CLASSES + ["Markets"] * 200
    for name in ("tfns", "sentfin", "fnspid_sample"):
        (root / name).mkdir(parents=True)
        pd.DataFrame({"text": texts}).to_parquet(root / name / "train.parquet")
    (root / "tfn_topic").mkdir()
    pd.DataFrame(
        {"text": texts, "label": classes, "dev_holdout": [i % 5 == 0 for i in range(len(texts))]}
    ).to_parquet(root / "tfn_topic" / "train.parquet")
    (root / "fpb").mkdir()
    pd.DataFrame({"text": texts, "fingpt_split": ["train"] * len(texts)}).to_parquet(
        root / "fpb" / "train.parquet"
    )
    return root


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    data = _fake_data(tmp_path / "data")
    monkeypatch.setenv("NEWSIMPACT_DATA_DIR", str(data))
    monkeypatch.setenv("NEWSIMPACT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NEWSIMPACT_WEAK_TOPICS", raising=False)
    return data


def test_weak_topics_build_on_first_use_and_load(fake_data, tmp_path):
    config = compose_train(["data=weak_topics"])
    source = config.data.sources["weak_topics"]
    root = Path(source.root)
    assert root.parent == tmp_path / "cache" / "derived" and root.name.startswith("weak_topics-v")
    assert not root.exists()  # composing and validating build nothing
    validate_train_config(config)
    assert not root.exists()

    from training.sources import load_split

    rows = load_split(source, source.splits["train"])
    assert (root / derived.DONE).is_file()
    built = json.loads((root / derived.DONE).read_text())
    assert built["name"] == "weak_topics" and built["version"] == root.name.split("-")[1]
    topics = {t for ts in rows["topics"] for t in ts}
    assert {"ai", "guidance"} <= topics  # the rules fired on the planted texts
    # the earnings set of the same folder loads too, and a second load reuses the folder
    stamp = (root / derived.DONE).stat().st_mtime_ns
    earnings = config.data.sources["weak_earnings"]
    assert "earnings" in {t for ts in load_split(earnings, earnings.splits["train"])["topics"] for t in ts}
    assert (root / derived.DONE).stat().st_mtime_ns == stamp


def test_same_bytes_as_the_script(fake_data, tmp_path):
    """The cache holds what scripts/weak_topic_labels.py writes (one builder, two callers)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "script_out"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "weak_topic_labels.py"), "--data", str(fake_data), "--out", str(out),
         "--sample", "2"],
        check=True, capture_output=True,
    )  # fmt: skip
    root = derived.ensure("weak_topics", derived.derived_dir("weak_topics"))
    for split in ("train", "validation", "test"):
        if (out / f"{split}.parquet").exists():
            assert (root / f"{split}.parquet").read_bytes() == (out / f"{split}.parquet").read_bytes()


def test_a_missing_input_names_the_dataset(fake_data):
    (fake_data / "fpb" / "train.parquet").unlink()
    config = compose_train(["data=weak_topics"])
    with pytest.raises(ConfigError) as err:
        validate_train_config(config)
    message = str(err.value)
    assert "needs the fpb dataset" in message and str(fake_data / "fpb") in message
    assert "NEWSIMPACT_DATA_DIR" in message


def test_the_cache_key_follows_version_and_inputs(fake_data, monkeypatch):
    first = derived.derived_dir("weak_topics")
    from training import weak_labels

    version = weak_labels.VERSION
    monkeypatch.setattr(weak_labels, "VERSION", version + 1)
    assert derived.derived_dir("weak_topics") != first
    monkeypatch.setattr(weak_labels, "VERSION", version)
    assert derived.derived_dir("weak_topics") == first
    pd.DataFrame({"text": ["one more headline"] + TWEETS}).to_parquet(fake_data / "tfns" / "train.parquet")
    assert derived.derived_dir("weak_topics") != first


def _build(root: str, data: str, cache: str) -> str:
    import os

    os.environ["NEWSIMPACT_DATA_DIR"], os.environ["NEWSIMPACT_CACHE_DIR"] = data, cache
    return (Path(root) / derived.DONE).read_text() if derived.ensure("weak_topics", root) else ""


def test_processes_starting_together_build_once(fake_data, tmp_path):
    root = derived.derived_dir("weak_topics")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        done = pool.starmap(_build, [(root, str(fake_data), str(tmp_path / "cache"))] * 2)
    assert done[0] == done[1]  # one build, read by both
    assert not list(Path(root).parent.glob(".*.tmp-*"))


def test_unknown_derived_source():
    with pytest.raises(ConfigError, match="derived source 'nope' is unknown"):
        derived.derived_dir("nope")
