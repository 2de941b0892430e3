"""The offline GPU check, at toy size on the CPU: the kit, the shell entry point and results.json's schema.

The whole check (every stage) takes ~3.5 minutes on the 2-core box, too long for CI: this runs the kit
and three stages that exercise the driver's paths (a plain stage, a training config refused on the CPU,
and a forward pass on the model the check makes without a Trainer). `bash scripts/gpu_check.sh --cpu .gpu OUT` runs
them all.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_offline_from_a_kit_and_reports_every_stage(tmp_path):
    kit = tmp_path / "kit"
    made = subprocess.run(
        [sys.executable, "scripts/gpu_kit.py", "prepare", str(kit), "--no-wheels"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    manifest = json.loads((kit / "manifest.json").read_text())
    assert manifest["total_bytes"] <= 60 * 2**20
    assert "minilm/model.safetensors" in manifest["files"]

    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)}
    got = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu", str(kit), str(out), "--only", "env,train_fsdp,forward"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["machine"]["mode"].startswith("cpu")
    stages = results["stages"]
    assert list(stages) == ["env", "train_fsdp", "forward"]
    for name, entry in stages.items():
        assert entry["ok"] is True, (name, entry.get("error"))
        assert isinstance(entry["seconds"], float | int)
    assert stages["env"]["cuda"] is False
    # Lightning's FSDP needs CUDA: on the CPU the check is the one-line refusal, before any work
    assert "trainer.strategy=fsdp needs CUDA GPUs" in stages["train_fsdp"]["refused_on_cpu"]
    # forward: on the model the check makes without a Trainer when no training stage ran before it
    assert stages["forward"]["tokens_s"] > 0 and stages["forward"]["matmul_params"] > 0
    assert (out / "FALLBACK_MODEL").exists()
    assert (out / "log.txt").stat().st_size > 0


def test_gpu_check_without_a_kit_says_how_to_make_one(tmp_path):
    got = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu", str(tmp_path / "missing"), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert got.returncode == 2
    assert "gpu_kit.py prepare" in got.stderr
