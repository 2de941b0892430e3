"""The job folder: one plan, work claimed at run time, per-unit and per-worker records.

Every worker of a job (torchrun ranks, independent processes started with the same command on one
shared ``output_dir``, Ray actors) runs the same protocol on the folder, so they share the job without
talking to each other:

- ``_job.json``: the job identity and its plan, published once with an atomic create-if-absent
  (``os.link``), so workers starting in the same second agree on one plan.
- ``_claims/<unit>.json``: a worker takes the next unfinished unit by creating its claim file with
  ``O_EXCL`` and keeps it fresh (a heartbeat thread touches it). A claim whose process is gone (same
  host: its pid no longer runs) or that has not been touched for ``claim_timeout_s`` is taken over, so a
  dead worker's unit is scored again by someone else or by the next rerun.
- ``_done/<unit>.json``: written after the unit's parts are renamed into place, with each part's (and
  errors file's) byte size and SHA-256; a unit is done when its record exists and every part it lists
  does. A run starts by checking every done record's files (sizes; ``inference.verify=full``: hashes):
  a unit whose file changed or went missing loses its record and files and is scored again. Part names are fixed by the plan, so a unit scored twice
  (a slow worker whose claim was taken over) replaces its parts with the same rows: each input row
  still appears exactly once.
- ``_workers/<worker>.json``: what each worker did in this run (rows, units, seconds), written when it
  ends; every manifest lists them all (``this_run.workers``), so the last worker to end writes the whole
  list. They move to ``_workers/previous/`` when a worker starts on a job whose manifest says complete (a
  rerun begins a new run), never when a manifest is written: a worker still ending (its last unit done,
  its record not yet written) would otherwise find the others' records gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from inference.job_records import ClaimRecord, DoneRecord, FileRecord, JobRecord, ManifestRecord, WorkerRecord
from inference.readers import Unit

JOB_FILE = "_job.json"
CLAIMS, DONE, WORKERS = "_claims", "_done", "_workers"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    tmp.write_text(text)
    tmp.replace(path)


_OWN_WORKERS: set[str] = set()  # worker ids made by this process: a claim with our pid is ours only then


def worker_id(rank: int | None = None) -> str:
    """host, pid and a random token (a restarted container can reuse a dead worker's pid)."""
    host = socket.gethostname()
    tag = f"rank{rank}-" if rank is not None else ""
    worker = f"{host}-{tag}{os.getpid()}-{secrets.token_hex(3)}"
    _OWN_WORKERS.add(worker)
    return worker


def publish_job(out: Path, job: JobRecord) -> JobRecord:
    """Write ``_job.json`` unless it exists; returns the job that is in the folder now."""
    out.mkdir(parents=True, exist_ok=True)
    for sub in (CLAIMS, DONE, WORKERS):
        (out / sub).mkdir(exist_ok=True)
    path = out / JOB_FILE
    tmp = out / f".{JOB_FILE}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.write_text(json.dumps(job.to_dict(), indent=2))
    try:
        os.link(tmp, path)  # atomic create-if-absent: one plan however many workers race
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return JobRecord.from_dict(json.loads(path.read_text()))


def read_job(out: Path) -> JobRecord | None:
    path = out / JOB_FILE
    return JobRecord.from_dict(json.loads(path.read_text())) if path.exists() else None


def read_manifest(out: Path) -> ManifestRecord | None:
    """The job's last ``manifest.json`` (None: no run has finished writing one)."""
    try:
        return ManifestRecord.from_dict(json.loads((out / "manifest.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


# -- done records -------------------------------------------------------------------------------------
def _read_done(path: Path) -> DoneRecord | None:
    try:
        return DoneRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):  # being written, or not a record
        return None


def done_units(out: Path) -> dict[str, DoneRecord]:
    """Done records of units whose listed parts all exist."""
    names = set(os.listdir(out))
    done = {}
    for record_path in (out / DONE).glob("*.json"):
        record = _read_done(record_path)
        if record is not None and all(p in names for p in record.parts):
            done[record_path.stem] = record
    return done


def mark_done(out: Path, unit: Unit, record: DoneRecord) -> None:
    atomic_write_text(out / DONE / f"{unit.name}.json", json.dumps(record.to_dict()))


def file_record(path: Path) -> FileRecord:
    """Byte size and SHA-256 of an output file, for its unit's done record."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return FileRecord(bytes=path.stat().st_size, sha256=digest.hexdigest())


def _mismatch(out: Path, name: str, expected: FileRecord, verify: str) -> str | None:
    path = out / name
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size != expected.bytes:
        return f"{name} is {size:,} bytes, its done record says {expected.bytes:,}"
    if verify == "full" and file_record(path).sha256 != expected.sha256:
        return f"{name} differs from the SHA-256 in its done record"
    return None


def check_done(out: Path, verify: str = "size") -> list[str]:
    """Done records whose files no longer match (``verify``: size, or full for SHA-256 as well): each such
    unit's record and files are removed, so this run scores it again; returns one line per unit saying
    why. Records written before sizes were recorded are trusted as they are. Call under the job lock."""
    problems = []
    for record_path in sorted((out / DONE).glob("*.json")):
        record = _read_done(record_path)
        if record is None:
            continue
        files = record.files
        reasons = [r for name, exp in files.items() if (r := _mismatch(out, name, exp, verify))]
        if not reasons:
            continue
        record_path.unlink()
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
        problems.append(f"unit {record_path.stem}: {'; '.join(reasons)}: scoring it again")
    if problems:
        with contextlib.suppress(FileNotFoundError):
            (out / "_SUCCESS").unlink()
    return problems


# -- claims -------------------------------------------------------------------------------------------
def _alive_here(info: ClaimRecord) -> bool | None:
    """Whether a claim's process runs on this host (None: another host, cannot tell)."""
    if info.host != socket.gethostname():
        return None
    pid = int(info.pid)
    if pid == os.getpid():  # ours, or a dead predecessor that had our pid (a restarted container)
        return info.worker in _OWN_WORKERS
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Claim:
    """A held claim on one unit; a daemon thread refreshes it until :meth:`release`."""

    def __init__(self, path: Path, worker: str, refresh_s: float):
        self.path, self.worker = path, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(refresh_s,), daemon=True)
        self._thread.start()

    def _beat(self, refresh_s: float) -> None:
        while not self._stop.wait(refresh_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def still_mine(self) -> bool:
        try:
            return ClaimRecord.from_dict(json.loads(self.path.read_text())).worker == self.worker
        except (OSError, ValueError, TypeError, KeyError):
            return False

    def release(self) -> None:
        self._stop.set()
        if self.still_mine():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def try_claim(out: Path, unit: Unit, worker: str, timeout_s: float) -> Claim | None:
    """Claim ``unit`` for ``worker``: None when a live worker holds it."""
    path = out / CLAIMS / f"{unit.name}.json"
    body = json.dumps(
        ClaimRecord(worker, host=socket.gethostname(), pid=os.getpid(), claimed_at=time.time()).to_dict()
    ).encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _expired(path, worker, timeout_s):
                return None
            # Take over: only one of several takers wins the rename; the winner then creates afresh.
            grave = path.with_name(f".{path.name}.expired-{secrets.token_hex(4)}")
            try:
                os.rename(path, grave)
            except FileNotFoundError:
                return None
            grave.unlink()
            continue
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        return Claim(path, worker, refresh_s=max(1.0, timeout_s / 5))
    return None


def _expired(path: Path, me: str, timeout_s: float) -> bool:
    try:
        info = ClaimRecord.from_dict(json.loads(path.read_text()))
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    except (OSError, ValueError, TypeError, KeyError):  # being written right now
        return False
    alive = _alive_here(info)
    return (not alive) if alive is not None else age > timeout_s


def claim_next(out: Path, order: list[Unit], worker: str, timeout_s: float) -> tuple[Unit, Claim] | None:
    """The first unit of ``order`` that is neither done nor held by a live worker, claimed."""
    done = done_units(out)
    for unit in order:
        if unit.name in done:
            continue
        claim = try_claim(out, unit, worker, timeout_s)
        if claim is None:
            continue
        if unit.name in done_units(out):  # finished between the listing and the claim
            claim.release()
            continue
        return unit, claim
    return None


def claim_order(units: list[Unit]) -> list[Unit]:
    """Biggest first (longest-processing-time order): the last units to finish are short ones."""
    return sorted(units, key=lambda u: (-u.cost, u.file_index, u.index))


def clean_unit_leftovers(out: Path, unit: Unit) -> None:
    """Temporary files of a unit that someone else was scoring when it died (we hold its claim now)."""
    prefixes = (f".part-{unit.name}", f".errors-{unit.name}")
    if unit.kind == "stream":
        prefixes = (f".part-{unit.file_index:05d}-", f".errors-{unit.file_index:05d}-")
    for path in out.iterdir():
        if path.name.startswith(prefixes) and ".tmp-" in path.name:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


# -- workers ------------------------------------------------------------------------------------------
def write_worker(out: Path, record: WorkerRecord) -> None:
    atomic_write_text(out / WORKERS / f"{record.worker}.json", json.dumps(record.to_dict()))


def this_run_workers(out: Path) -> list[WorkerRecord]:
    records = []
    for path in sorted((out / WORKERS).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            records.append(WorkerRecord.from_dict(json.loads(path.read_text())))
    return sorted(records, key=lambda r: r.started_at)


def begin_run(out: Path, verify: str = "size") -> list[str]:
    """A worker starting on a job whose last manifest says complete begins a new run (a rerun): the
    finished run's worker records move to ``_workers/previous/``, so this run's manifest lists only this
    run's workers. After an interrupted run (no complete manifest) the records stay: the rerun finishes
    that run. First, done units whose files changed are reopened (:func:`check_done`, returned)."""
    with job_lock(out):
        reopened = check_done(out, verify)
        manifest = read_manifest(out)
        if manifest is None or not manifest.complete:
            return reopened
        previous = out / WORKERS / "previous"
        previous.mkdir(parents=True, exist_ok=True)
        for path in (out / WORKERS).glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                path.replace(previous / path.name)
    return reopened


@contextlib.contextmanager
def job_lock(out: Path) -> Iterator[None]:
    """Serialises finishing (manifest, _SUCCESS) between workers that end at the same time."""
    with open(out / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reset_folder(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
