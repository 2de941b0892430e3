"""The `newsimpact` console command: the same entry points and overrides as `python -m training.train` ...,
from any working directory."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import write_jsonl

pytestmark = pytest.mark.slow


def _nsi(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "newsimpact", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_help_lists_every_command_and_each_shows_its_config_groups(tmp_path):
    top = _nsi("--help", cwd=tmp_path)
    assert top.returncode == 0
    for command in ("train", "evaluate", "export", "score", "impact-labels", "signals"):
        assert f"\n  {command} " in top.stdout
    train = _nsi("train", "--help", cwd=tmp_path)
    assert train.returncode == 0 and "experiment:" in train.stdout and "tfns_minilm" in train.stdout
    unknown = _nsi("trian", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


def test_train_export_score_from_outside_the_checkout(tiny_bert, tmp_path):
    """Relative run and output folders land in the working directory; configs and the sample come
    from the package."""
    train = _nsi("train", "run_dir=r", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                 f"model.pretrained_model_name_or_path={tiny_bert}", "model.max_length=32", cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["global_step"] == 3
    export = _nsi("export", "run_dir=r", "output_dir=m", cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-2000:]
    write_jsonl(tmp_path / "one.jsonl", [{"id": "1", "text": "$ACME beats estimates"}])
    score = _nsi("score", "model_dir=m", "input=one.jsonl", "output_dir=s", "inference.progress=false",
                 cwd=tmp_path)  # fmt: skip
    assert score.returncode == 0, score.stderr[-2000:]
    assert (tmp_path / "s" / "_SUCCESS").exists()
    typo = _nsi(
        "score", "model_dir=m", "input=one.jsonl", "output_dir=s", "inference.unit_row=5", cwd=tmp_path
    )
    assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1
    assert "inference.unit_row" in typo.stderr
