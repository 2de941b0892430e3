"""A real Optuna sweep through Hydra's multirun, as users run it, then extended by rerunning it."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweep extra is not installed")


def _sweep(tiny_bert, cwd, trials):
    cmd = [
        sys.executable, "-m", "training.train", "sweep=lora_optuna", f"hydra.sweeper.n_trials={trials}",
        "name=tiny", f"model.pretrained_model_name_or_path={tiny_bert}", "model.max_length=48",
        "trainer.enable_progress_bar=false", "trainer.max_steps=4", "trainer.max_epochs=-1",
        "trainer.val_check_interval=2", "checkpoint.monitor=val/sentiment_f1_macro", "data.batch_size=8",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_optuna_sweep_maximises_the_monitor_and_resumes(tiny_bert, tmp_path):
    import optuna

    _sweep(tiny_bert, tmp_path, trials=2)
    sweep_dir = tmp_path / "multirun" / "tiny"
    trials = sorted(p for p in sweep_dir.iterdir() if p.name.startswith("trial-"))
    assert len(trials) == 2
    scores = {}
    for trial in trials:
        info = json.loads((trial / "run.json").read_text())
        assert info["status"] == "finished" and info["global_step"] == 4
        scores[trial.name] = info["best_score"]
        # the best of the validations this trial ran (steps 2 and 4)
        assert info["best_score"] == max(h["sentiment_f1_macro"] for h in info["val_history"])
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(scores.values()))
    assert set(best["best_params"]) == {"peft.r", "peft.lora_alpha", "peft.lora_dropout", "optim.lr"}

    # Rerunning the command extends the same study (stored in tiny.optuna.db) by n_trials more, in new folders.
    _sweep(tiny_bert, tmp_path, trials=1)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 3
    assert len([p for p in sweep_dir.iterdir() if p.name.startswith("trial-")]) == 3
