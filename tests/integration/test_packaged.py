"""Packaged models (newsimpact/models/): a name wherever a model folder goes, files checked against their
recorded hashes, and `newsimpact card`."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference import card
from tests.conftest import write_jsonl
from training import packaged_models as pm
from training.config import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_registry(exported, tiny_bert, tmp_path, monkeypatch):
    """A models folder holding the tiny adapter export as `tiny-card`, its backbone named symbolically."""
    models = tmp_path / "models"
    folder = models / "tiny-card"
    shutil.copytree(exported["adapter"], folder)
    meta = json.loads((folder / "newsimpact.json").read_text())
    meta["base_model"] = "newsimpact:tiny"
    (folder / "newsimpact.json").write_text(json.dumps(meta))
    files = {
        f.name: {"sha256": pm.sha256_file(f), "bytes": f.stat().st_size}
        for f in folder.iterdir()
        if f.is_file()
    }
    registry = {
        "models": {"tiny-card": {"folder": "tiny-card", "backbone": "newsimpact:tiny", "files": files}}
    }
    (models / pm.REGISTRY).write_text(json.dumps(registry))
    monkeypatch.setattr(pm, "models_dir", lambda: models)
    monkeypatch.setenv("NEWSIMPACT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(pm.BACKBONES, "newsimpact:tiny", lambda: tiny_bert)
    return folder


def test_a_name_resolves_to_the_packaged_folder_and_a_path_stays_a_path(fake_registry, tmp_path):
    assert pm.resolve_model_dir("tiny-card") == str(fake_registry)
    assert pm.resolve_model_dir("./tiny-card") == "./tiny-card"  # a folder of yours with the same name
    assert pm.resolve_model_dir(str(tmp_path / "x")) == str(tmp_path / "x")
    assert pm.packaged_name(fake_registry) == "tiny-card"
    assert pm.packaged_name(tmp_path) is None
    assert pm.verify_packaged_model("tiny-card") == []


def test_a_changed_or_missing_file_is_reported(fake_registry):
    heads = fake_registry / "heads.safetensors"
    data = bytearray(heads.read_bytes())
    data[-1] ^= 1
    heads.write_bytes(bytes(data))
    (fake_registry / "tokenizer.json").unlink()
    problems = pm.verify_packaged_model("tiny-card")
    assert any("heads.safetensors differs" in p for p in problems)
    assert any("tokenizer.json is missing" in p for p in problems)


def test_score_evaluate_and_distill_take_the_name(fake_registry, tmp_path):
    from inference.score import ScoreConfig, run, validate_score_config
    from training.config import teacher_dirs

    rows = [
        {"id": str(i), "text": t}
        for i, t in enumerate(["Acme beats estimates", "$XYZ plunges on fraud probe"])
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "scored"
    config = ScoreConfig(model_dir="tiny-card", input=str(data), output_dir=str(out))
    run(config, validate_score_config(config))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "tiny-card" and manifest["scored"] == 2
    assert Path(manifest["model"]["dir"]) == fake_registry.resolve()
    assert teacher_dirs("tiny-card") == [str(fake_registry)]


def test_score_without_a_model_dir_uses_card(tmp_path):
    from inference.score import ScoreConfig, validate_score_config

    assert ScoreConfig().model_dir == "card"
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": "x"}])
    config = ScoreConfig(input=str(data), output_dir=str(tmp_path / "o"))
    if "card" in pm.packaged_models():
        validate_score_config(config)
        assert pm.packaged_name(config.model_dir) == "card"
    else:  # a checkout before the model is built: the error says what to pass
        with pytest.raises(ConfigError, match="packaged model's name"):
            validate_score_config(config)


def test_card_json_and_plain_text(fake_registry):
    out = io.StringIO()
    texts = ["Acme Corp (NASDAQ: ACME) beats estimates", "Oil slips as inventories build"]
    assert card.run(["--json", "model_dir=tiny-card", *texts], stdout=out) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["text"] for r in records] == texts
    assert records[0]["tickers"][0]["ticker"] == "ACME"
    for r in records:
        assert r["sentiment"] in r["sentiment_probs"] or isinstance(r["sentiment_probs"], list)
        assert -1 <= r["sentiment_score"] <= 1 and 0 <= r["impact"] <= 1

    plain = io.StringIO()
    assert card.run(["model_dir=tiny-card", texts[0]], stdout=plain) == 0  # a StringIO is not a terminal
    text = plain.getvalue()
    assert "\033[" not in text
    for field in ("impact", "sentiment", "tickers", "topics", "ACME", "model tiny-card"):
        assert field in text
    colour = io.StringIO()
    assert card.run(["--color", "always", "model_dir=tiny-card", texts[0]], stdout=colour) == 0
    assert "\033[" in colour.getvalue()


def test_card_reads_stdin_one_text_per_line(fake_registry):
    out = io.StringIO()
    assert (
        card.run(["--json", "model_dir=tiny-card"], stdout=out, stdin=io.StringIO("first one\n\nsecond\n"))
        == 0
    )
    assert [json.loads(line)["text"] for line in out.getvalue().splitlines()] == ["first one", "second"]


def test_card_errors_name_the_fix(tmp_path, capsys):
    assert card.run(["model_dir=" + str(tmp_path), "text"]) == 2
    assert "is not a model folder" in capsys.readouterr().err
    assert card.run([], stdin=io.StringIO("")) == 2
    assert "no text given" in capsys.readouterr().err


def test_card_command_piped_is_plain(exported, tmp_path):
    """The console command in a fresh process, its output piped: plain text, exit 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "newsimpact", "card", f"model_dir={exported['adapter']}", "Acme beats estimates"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\033[" not in proc.stdout and "sentiment" in proc.stdout and "1 article" in proc.stdout


@pytest.mark.parametrize("name", sorted(pm.packaged_models()))
def test_every_packaged_model_matches_its_hashes_loads_and_scores(name, tmp_path, monkeypatch):
    """The models the package carries: intact, loadable from their symbolic backbone, and reading good
    news as better than bad news."""
    assert pm.verify_packaged_model(name) == []
    backbone = pm.packaged_models()[name]["backbone"]
    if backbone == "newsimpact:mpnet":
        try:
            pm.MPNET_PARTS and pm._slice_files(pm.MPNET_PARTS)
        except ConfigError:
            pytest.skip(f"{name} loads on MPNet: the mpnet extra is not installed (its hashes were checked)")
    monkeypatch.setenv("NEWSIMPACT_CACHE_DIR", str(tmp_path))  # the card's merged copy goes here
    out = io.StringIO()
    texts = [
        "Acme Corp beats estimates, raises full-year guidance; shares jump 12%",
        "Acme Corp misses estimates and cuts its outlook; shares plunge 15%",
    ]
    assert card.run(["--json", f"model_dir={name}", *texts], stdout=out) == 0
    good, bad = (json.loads(line) for line in out.getvalue().splitlines())
    assert good["sentiment_score"] > 0.3 > -0.3 > bad["sentiment_score"]
    meta = json.loads(
        (pm.models_dir() / pm.packaged_models()[name]["folder"] / "newsimpact.json").read_text()
    )
    assert meta["base_model"] in pm.BACKBONES
    assert (pm.models_dir() / pm.packaged_models()[name]["folder"] / "README.md").is_file()


def test_card_merges_an_adapter_once_and_scores_the_same(fake_registry, tmp_path):
    """The card's cached merged copy: built on first use, reused after, the same outputs as the adapter."""
    from inference.engine import Scorer
    from inference.prep import Article

    merged = Path(card.merged_copy(str(fake_registry)))
    assert merged.parent == tmp_path / "cache" / "merged" and (merged / "model.safetensors").is_file()
    assert not (merged / "adapter_config.json").exists()
    stamp = (merged / "newsimpact.json").stat().st_mtime_ns
    assert card.merged_copy(str(fake_registry)) == str(merged)
    assert (merged / "newsimpact.json").stat().st_mtime_ns == stamp
    articles = [Article("1", "Acme Corp (NASDAQ: ACME) beats estimates"), Article("2", "Oil slips " * 60)]
    a = Scorer(str(fake_registry)).score(articles)
    b = Scorer(str(merged)).score(articles)
    for x, y in zip(a, b):
        assert x["sentiment"] == y["sentiment"] and x["n_chunks"] == y["n_chunks"]
        assert (
            abs(x["sentiment_score"] - y["sentiment_score"]) < 1e-4 and abs(x["impact"] - y["impact"]) < 1e-4
        )
        assert x["tickers"][0]["ticker"] == y["tickers"][0]["ticker"] if x["tickers"] else not y["tickers"]
    assert card.merged_copy(str(merged)) == str(merged)  # a merged folder is used as it is


def test_the_card_runs_a_cached_onnx_copy_that_agrees_with_the_pytorch_model(fake_registry, tmp_path):
    """`newsimpact card` builds an ONNX copy of the model once (the cold-start path: no transformers model
    code) and its cards agree with the PyTorch model's in fp32; `--backend torch` keeps PyTorch."""
    texts = ["Acme Corp (NASDAQ: ACME) beats estimates and raises guidance", "Oil slips as inventories build"]
    runs = {}
    for backend in ("auto", "torch"):
        out = io.StringIO()
        assert card.run(["--json", "--backend", backend, "model_dir=tiny-card", *texts], stdout=out) == 0
        runs[backend] = [json.loads(line) for line in out.getvalue().splitlines()]
    cached = list((tmp_path / "cache" / "card").glob("*/model.onnx"))
    assert len(cached) == 1
    assert json.loads((cached[0].parent / "newsimpact.json").read_text())["format"] == "onnx"
    for fast, slow in zip(runs["auto"], runs["torch"]):
        assert fast["sentiment"] == slow["sentiment"] and fast["topics"] == slow["topics"]
        # the PyTorch card computes in bf16 on CPUs that have it: agreement to bf16's precision
        assert max(abs(a - b) for a, b in zip(fast["sentiment_probs"], slow["sentiment_probs"])) < 2e-2
        assert abs(fast["sentiment_score"] - slow["sentiment_score"]) < 2e-2
        assert [t["ticker"] for t in fast["tickers"]] == [t["ticker"] for t in slow["tickers"]]
    stamp = cached[0].stat().st_mtime
    assert card.run(["--json", "model_dir=tiny-card", texts[0]], stdout=io.StringIO()) == 0
    assert cached[0].stat().st_mtime == stamp  # built once
