"""The scorer as users run it: the CLI, torchrun with 2 CPU processes (gloo), a SIGKILL mid-job."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, write_jsonl

pytestmark = pytest.mark.slow
SENTENCES = [
    "Acme Corp (NASDAQ: ACME) beats estimates and raises guidance",
    "$GLBX shares plunge after a profit warning",
    "Initech to report results next week",
    "Markets rally as inflation cools; $ACME and $GLBX lead gains",
]


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _corpus(path, n, prefix):
    rows = [
        {"id": f"{prefix}-{i}", "text": SENTENCES[i % 4] + (" More detail follows." * (i % 7))}
        for i in range(n)
    ]
    return write_jsonl(path, rows)


def _read(out):
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)


def _assert_same_scores(reference, other, n):
    """Every id once, and the same values (1e-4) and labels as the reference run."""
    assert len(other) == n and other["id"].is_unique and set(other["id"]) == set(reference["id"])
    merged = reference.merge(other, on="id", suffixes=("_1", "_2"))
    for col in ("sentiment_score", "impact"):
        assert np.abs(merged[f"{col}_1"] - merged[f"{col}_2"]).max() < 1e-4
    assert (merged["sentiment_1"] == merged["sentiment_2"]).all()


def _cli(*args):
    return [sys.executable, "-m", "inference.score", *args]


def test_missing_model_dir_and_empty_glob_are_one_line_errors(tmp_path):
    result = subprocess.run(
        _cli(f"model_dir={tmp_path}/nope", f"input={tmp_path}/*.jsonl", f"output_dir={tmp_path}/o"),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "model_dir" in lines[0] and "matches no file" in lines[1]
    assert "Traceback" not in result.stderr


def test_torchrun_two_processes_match_one_process(exported, tmp_path):
    a = _corpus(tmp_path / "a.jsonl", 60, "a")
    b = _corpus(tmp_path / "b.jsonl", 45, "b")
    common = [
        f"model_dir={exported['merged']}",
        f"input=[{a},{b}]",
        "inference.unit_rows=20",
        "inference.progress=false",
    ]
    single = subprocess.run(
        _cli(*common, f"output_dir={tmp_path}/one"),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533", "-m", "inference.score",
         *common, f"output_dir={tmp_path}/two"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    _assert_same_scores(_read(tmp_path / "one"), _read(tmp_path / "two"), 105)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["this_run"]["processes"] == 2 and manifest["scored"] == 105
    assert (tmp_path / "two" / "_SUCCESS").exists()


def test_sigkill_mid_job_then_rerun_scores_every_row_once(exported, tmp_path):
    src = _corpus(tmp_path / "big.jsonl", 3600, "k")
    args = _cli(
        f"model_dir={exported['merged']}",
        f"input={src}",
        "inference.unit_rows=300",
        "inference.progress=false",
    )
    proc = subprocess.Popen([*args, f"output_dir={tmp_path}/killed"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    out = tmp_path / "killed"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    parts_at_kill = len(list(out.glob("part-*.parquet")))
    total = len(json.loads((out / "_job.json").read_text())["units"])
    assert 0 < parts_at_kill < total and not (out / "_SUCCESS").exists()
    rerun = subprocess.run(
        [*args, f"output_dir={out}"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    clean = subprocess.run(
        [*args, f"output_dir={tmp_path}/clean"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert clean.returncode == 0
    got, ref = _read(out), _read(tmp_path / "clean")
    assert len(got) == 3600 and got["id"].is_unique
    merged = got.merge(ref, on="id")
    assert np.abs(merged["impact_x"] - merged["impact_y"]).max() < 1e-5
    assert not list(out.glob(".*tmp*")), "no temporary files may remain"


def test_ticker_map_override_works_as_the_readme_writes_it(exported, tmp_path):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": "Alibaba's cloud revenue grew 26 %"}])
    result = subprocess.run(
        _cli(f"model_dir={exported['merged']}", f"input={inputs}", f"output_dir={tmp_path}/o",
             "inference.ticker_map={Alibaba: BABA}", "inference.progress=false"),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert [t["ticker"] for t in _read(tmp_path / "o")["tickers"][0]] == ["BABA"]


def _holds_claim(out, pid):
    for path in (out / "_claims").glob("*.json"):
        try:
            if json.loads(path.read_text()).get("pid") == pid:
                return True
        except (OSError, ValueError):
            pass  # released or being written
    return False


def test_independent_processes_share_one_job_and_survive_a_kill(exported, tmp_path):
    """The same command started twice on one output_dir (no torchrun): one is killed -9 and started
    again; every id ends up scored exactly once and the manifest lists both live processes."""
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"i{i}", "text": SENTENCES[i % 4]} for i in range(40_000)]
    )
    out = tmp_path / "shared"
    args = _cli(f"model_dir={exported['merged']}", f"input={src}", f"output_dir={out}",
                "inference.unit_rows=1000", "inference.max_chunks=1", "inference.progress=false")  # fmt: skip

    def start():
        return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip

    doomed, survivor = start(), start()
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.05)
    # The survivor waits (SIGSTOP) until the restarted process holds a unit, so the three overlap
    # whatever the machine's speed (otherwise the survivor may finish the job first: a separate run).
    os.kill(survivor.pid, signal.SIGSTOP)
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()
    restarted = start()
    try:
        while time.time() < deadline and restarted.poll() is None and not _holds_claim(out, restarted.pid):
            time.sleep(0.02)
    finally:
        os.kill(survivor.pid, signal.SIGCONT)
    for proc in (survivor, restarted):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    got = _read(out)
    assert len(got) == 40_000 and got["id"].is_unique
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and (out / "_SUCCESS").exists()
    pids = {int(w["worker"].rsplit("-", 2)[1]) for w in manifest["this_run"]["workers"]}
    assert {survivor.pid, restarted.pid} <= pids and doomed.pid not in pids
    assert not list(out.glob(".*tmp*")), "no temporary files may remain"


def test_ray_backend_matches_the_local_backend_and_reruns_score_nothing_twice(exported, tmp_path):
    pytest.importorskip("ray.data")
    a = _corpus(tmp_path / "a.jsonl", 80, "a")
    pd.DataFrame([{"id": f"b-{i}", "text": SENTENCES[i % 4]} for i in range(40)]).to_parquet(
        tmp_path / "b.parquet", row_group_size=10
    )
    common = [f"model_dir={exported['merged']}", f"input=[{a},{tmp_path / 'b.parquet'}]",
              "inference.unit_rows=20", "inference.progress=false"]  # fmt: skip
    ray_args = [*common, "inference.backend=ray", "inference.ray.num_cpus=2", f"output_dir={tmp_path}/ray"]
    # Ray's batch-inference split: windows prepared by CPU tasks, the model in the actor
    tasks_args = [*common, "inference.backend=ray", "inference.ray.num_cpus=2", "inference.ray.prep=tasks",
                  "inference.window=16", f"output_dir={tmp_path}/ray_tasks"]  # fmt: skip
    for args in ([*common, f"output_dir={tmp_path}/local"], ray_args, tasks_args):
        result = subprocess.run(
            _cli(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_scores(_read(tmp_path / "local"), _read(tmp_path / "ray"), 120)
    _assert_same_scores(_read(tmp_path / "local"), _read(tmp_path / "ray_tasks"), 120)
    records = [json.loads(p.read_text()) for p in (tmp_path / "ray_tasks" / "_workers").glob("*.json")]
    assert records and all(r["prep"] == "ray_tasks" for r in records)
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert {w["backend"] for w in manifest["this_run"]["workers"]} == {"ray"} and manifest["complete"]
    # A rerun scores only what is missing: nothing, then the one unit whose part was deleted.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("part-*.parquet")}
    again = subprocess.run(_cli(*ray_args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("part-*.parquet")} == before
    (tmp_path / "ray" / "part-00001-00000.parquet").unlink()
    third = subprocess.run(_cli(*ray_args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["units"]["this_run"] == 1 and manifest["scored"] == 120
    assert len(_read(tmp_path / "ray")) == 120
