"""The job folder protocol: one plan however many workers race, claims that live workers keep and dead
ones lose, done records that need their parts, and the claim order that balances skewed archives."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

from inference import jobs
from inference.job_records import DoneRecord, JobRecord, WorkerRecord
from inference.readers import Unit


def _unit(index, cost=10, kind="bytes"):
    return Unit(0, "/data/a.jsonl", index, kind, 0, cost, cost)


def _folder(tmp_path):
    out = tmp_path / "out"
    jobs.publish_job(out, JobRecord({"x": 1}, []))
    return out


def test_one_plan_when_workers_publish_in_the_same_instant(tmp_path):
    out = tmp_path / "out"
    barrier = threading.Barrier(8)
    seen = []

    def publish(i):
        barrier.wait()
        seen.append(jobs.publish_job(out, JobRecord({"x": 1}, [], created_at=str(i))).created_at)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1  # every worker got the same plan: the first one published
    assert json.loads((out / jobs.JOB_FILE).read_text())["created_at"] == seen[0]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_live_claim_is_respected_and_released(tmp_path):
    out = _folder(tmp_path)
    unit = _unit(0)
    first = jobs.try_claim(out, unit, jobs.worker_id(), timeout_s=60)
    assert first is not None and first.still_mine()
    assert jobs.try_claim(out, unit, jobs.worker_id(), timeout_s=60) is None
    first.release()
    second = jobs.try_claim(out, unit, jobs.worker_id(), timeout_s=60)
    assert second is not None
    second.release()


def test_a_dead_workers_claim_on_this_host_is_taken_over_at_once(tmp_path):
    out = _folder(tmp_path)
    unit = _unit(0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = {"worker": "gone", "host": socket.gethostname(), "pid": dead.pid, "claimed_at": time.time()}
    (out / jobs.CLAIMS / f"{unit.name}.json").write_text(json.dumps(info))
    claim = jobs.try_claim(out, unit, "me", timeout_s=3600)
    assert claim is not None and claim.still_mine()
    claim.release()


def test_another_hosts_claim_expires_when_not_refreshed(tmp_path):
    out = _folder(tmp_path)
    unit = _unit(0)
    path = out / jobs.CLAIMS / f"{unit.name}.json"
    path.write_text(json.dumps({"worker": "far", "host": "elsewhere", "pid": 1, "claimed_at": 0}))
    assert jobs.try_claim(out, unit, "me", timeout_s=60) is None  # fresh: its owner may be working
    old = time.time() - 120
    os.utime(path, (old, old))
    claim = jobs.try_claim(out, unit, "me", timeout_s=60)
    assert claim is not None
    claim.release()


def test_a_held_claim_is_kept_fresh_by_its_heartbeat(tmp_path):
    out = _folder(tmp_path)
    claim = jobs.try_claim(out, _unit(0), "me", timeout_s=5)  # refreshed every second
    old = time.time() - 100
    os.utime(claim.path, (old, old))
    time.sleep(1.5)
    assert time.time() - claim.path.stat().st_mtime < 3
    claim.release()


def test_done_needs_the_listed_parts(tmp_path):
    out = _folder(tmp_path)
    unit = _unit(3)
    (out / "part-00000-00003.parquet").write_bytes(b"x")
    jobs.mark_done(out, unit, DoneRecord(parts=["part-00000-00003.parquet"], rows=1))
    assert set(jobs.done_units(out)) == {unit.name}
    (out / "part-00000-00003.parquet").unlink()
    assert jobs.done_units(out) == {}


def test_biggest_units_are_claimed_first_so_two_workers_balance(tmp_path):
    """Files of 3,000 / 100 / 3,000 / 100 rows: dealt round-robin, one worker gets both big ones; claimed
    biggest first by whoever is free, each gets one big and one small."""
    out = _folder(tmp_path)
    units = [_unit(i, cost) for i, cost in enumerate((3000, 100, 3000, 100))]
    order = jobs.claim_order(units)
    load = {"a": 0, "b": 0}
    busy_until = {"a": 0.0, "b": 0.0}
    while (free := min(busy_until, key=busy_until.get)) and (
        claimed := jobs.claim_next(out, order, free, 60)
    ):
        unit, claim = claimed
        (out / f"part-{unit.name}.parquet").write_bytes(b"x")
        jobs.mark_done(out, unit, DoneRecord(parts=[f"part-{unit.name}.parquet"]))
        claim.release()
        load[free] += unit.cost
        busy_until[free] += unit.cost
    assert load == {"a": 3100, "b": 3100}


def test_job_folder_records_read_older_files_and_keep_unknown_keys(tmp_path):
    """Every record of the job folder reads what an older version wrote (defaults filled in one place) and
    writes back, unchanged, keys a newer version added; the JSON is the same as before the types."""
    old_done = {"parts": ["part-00000-00001.parquet"], "rows": 3, "scored": 2, "errors": 1, "chunks": 4}
    done = DoneRecord.from_dict(old_done)
    assert done.files == {} and done.tokens == 0 and done.worker == ""  # written before sizes were recorded
    newer = {**old_done, "files": {"part-00000-00001.parquet": {"bytes": 9, "sha256": "ab"}}, "future": [1]}
    again = DoneRecord.from_dict(newer)
    assert again.files["part-00000-00001.parquet"].bytes == 9 and again.to_dict()["future"] == [1]
    assert {k: v for k, v in again.to_dict().items() if k in newer} == newer

    unit = _unit(2)
    job = JobRecord({"model": "m", "inputs": ["x"], "options": {"precision": "fp32"}}, [unit], "t", 0.1)
    out = tmp_path / "fresh"
    published = jobs.publish_job(out, job)
    assert published == job and published.units[0].name == unit.name and published.precision == "fp32"
    assert json.loads((out / jobs.JOB_FILE).read_text())["units"][0]["file_index"] == unit.file_index

    worker = WorkerRecord.from_dict({"worker": "w", "rows": 5, "started_at": 1.0, "gpu_name": "H200"})
    worker.add_counts({"rows": 2, "scored": 2, "tokens": 40})
    assert (worker.rows, worker.scored, worker.tokens, worker.extra) == (7, 2, 40, {"gpu_name": "H200"})
    jobs.write_worker(out, worker)
    assert jobs.this_run_workers(out) == [worker]

    assert jobs.read_manifest(out) is None
    (out / "manifest.json").write_text(
        json.dumps({"complete": True, "model": {"training_data": {"tfns": {}}}})
    )
    manifest = jobs.read_manifest(out)
    assert manifest is not None and manifest.complete and manifest.training_data == {"tfns": {}}


def test_ray_preparation_tasks_always_have_a_cpu_the_actors_do_not_hold():
    """inference.ray.prep=tasks: an actor waits on its preparation tasks, so the actors must leave a CPU
    free (else nothing is ever scheduled): fewer actors where their number was derived, a one-line error
    where the user set it or where one actor already takes every CPU."""
    from types import SimpleNamespace

    import pytest

    from inference.ray_backend import _actors_leaving_cpus_for_tasks
    from training.config import ConfigError

    derived = SimpleNamespace(actors=None, cpus_per_actor=1)
    assert _actors_leaving_cpus_for_tasks(2, 2.0, derived) == 1
    assert _actors_leaving_cpus_for_tasks(1, 16.0, derived) == 1  # one GPU actor, 15 CPUs for tasks
    with pytest.raises(ConfigError, match="inference.ray.prep=actor"):
        _actors_leaving_cpus_for_tasks(2, 2.0, SimpleNamespace(actors=2, cpus_per_actor=1))
    with pytest.raises(ConfigError, match="leave none"):
        _actors_leaving_cpus_for_tasks(1, 1.0, derived)
