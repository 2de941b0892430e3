"""The training entry point as users run it: real processes, a real 2-process DDP (gloo) launch, a kill."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _cmd(model, run_dir, *extra):
    return [
        sys.executable, "-m", "training.train",
        f"model.pretrained_model_name_or_path={model}", f"run_dir={run_dir}", "model.max_length=48",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "peft.r=4", "data.batch_size=4",
        *extra,
    ]  # fmt: skip


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def test_ddp_two_cpu_processes(tiny_bert, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = _cmd(tiny_bert, run_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
               "trainer.precision=32-true", "trainer.max_steps=6", "trainer.max_epochs=-1")  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == 6
    assert info["config"]["trainer"]["strategy"] == "ddp" and info["config"]["trainer"]["devices"] == 2
    # Two ranks split the 290 sample rows: 6 steps of 4 rows per rank, 48 distinct rows, none on both.
    rows = info["train_rows"]
    assert rows["per_rank"] == [24, 24] and rows["distinct"] == 48 and rows["seen_by_several_ranks"] == 0
    assert (
        "world_size=2" in result.stdout + result.stderr
        or "distributed_backend=gloo" in result.stdout + result.stderr
    )


def test_killed_run_resumes_where_it_stopped(tiny_bert, tmp_path):
    run_dir = tmp_path / "killed"
    base = _cmd(tiny_bert, run_dir, "trainer.max_epochs=-1", "checkpoint.every_n_train_steps=5")
    proc = subprocess.Popen(base + ["trainer.max_steps=400"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    step_ckpt = run_dir / "checkpoints"
    deadline = time.time() + 300
    # Kill as soon as the first checkpoint exists (a tiny model runs many steps a second).
    while time.time() < deadline and not (step_ckpt / "last.ckpt").exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (step_ckpt / "last.ckpt").exists(), "no checkpoint was written before the kill"
    import torch

    killed_at = torch.load(step_ckpt / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < killed_at < 400, "the first run must be killed before it finished"
    target = killed_at + 20
    result = subprocess.run(base + [f"trainer.max_steps={target}", "resume=true"], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["global_step"] == target
    with open(run_dir / "metrics.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")]
    # The resumed part starts at the checkpoint's step, not at 0.
    resumed = [s for s in steps if s >= killed_at]
    assert resumed and min(resumed) == killed_at and max(steps) == target - 1
