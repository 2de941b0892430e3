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
from inference.readers import Unit


def _unit(index, cost=10, kind="bytes"):
    return Unit(0, "/data/a.jsonl", index, kind, 0, cost, cost)


def _folder(tmp_path):
    out = tmp_path / "out"
    jobs.publish_job(out, {"identity": {"x": 1}, "units": []})
    return out


def test_one_plan_when_workers_publish_in_the_same_instant(tmp_path):
    out = tmp_path / "out"
    barrier = threading.Barrier(8)
    seen = []

    def publish(i):
        barrier.wait()
        seen.append(jobs.publish_job(out, {"identity": {"x": 1}, "by": i, "units": []})["by"])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1  # every worker got the same plan: the first one published
    assert json.loads((out / jobs.JOB_FILE).read_text())["by"] == seen[0]
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
    jobs.mark_done(out, unit, {"parts": ["part-00000-00003.parquet"], "rows": 1})
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
        jobs.mark_done(out, unit, {"parts": [f"part-{unit.name}.parquet"]})
        claim.release()
        load[free] += unit.cost
        busy_until[free] += unit.cost
    assert load == {"a": 3100, "b": 3100}
