"""The job folder's records as types: what ``_job.json``, ``_done/<unit>.json``, ``_claims/<unit>.json``
and ``_workers/<worker>.json`` hold (inference/jobs.py says how workers use them; docs/DESIGN.md section 6).

Every reader goes through ``from_dict`` (defaults for files written by older versions in one place, keys
this version does not know kept in ``extra`` and written back), every writer through ``to_dict``; the
JSON is what it was before the types, so a folder written by one version is read by the next.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from inference.readers import Unit

COUNT_FIELDS = ("rows", "scored", "errors", "chunks", "tokens")


def _split(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return {k: v for k, v in data.items() if k in known}, {k: v for k, v in data.items() if k not in known}


def _plain(record: Any) -> dict[str, Any]:
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "extra"}
    return {**record.extra, **out}


@dataclass
class JobRecord:
    """``_job.json``: the job's identity (model, inputs, value-changing options) and its plan."""

    identity: dict[str, Any]
    units: list[Unit]
    created_at: str | None = None
    planning_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return str(self.identity["options"]["precision"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        values, extra = _split(cls, data)
        values["units"] = [Unit(**u) for u in values["units"]]
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        out["units"] = [dataclasses.asdict(u) for u in self.units]
        return out


@dataclass
class FileRecord:
    """An output file as its unit's done record saw it."""

    bytes: int
    sha256: str


@dataclass
class DoneRecord:
    """``_done/<unit>.json``: the unit's parts, each output file's size and hash, and its counts."""

    parts: list[str]
    files: dict[str, FileRecord] = field(default_factory=dict)  # {}: written before sizes were recorded
    rows: int = 0
    scored: int = 0
    errors: int = 0
    chunks: int = 0
    tokens: int = 0
    worker: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DoneRecord:
        values, extra = _split(cls, data)
        values["files"] = {name: FileRecord(**f) for name, f in (values.get("files") or {}).items()}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = _plain(self)
        out["files"] = {name: dataclasses.asdict(f) for name, f in self.files.items()}
        return out


@dataclass
class ClaimRecord:
    """``_claims/<unit>.json``: who holds the unit (its file's mtime is the heartbeat)."""

    worker: str
    host: str = ""
    pid: int = -1
    claimed_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClaimRecord:
        values, extra = _split(cls, data)
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class WorkerRecord:
    """``_workers/<worker>.json``: what one worker did in this run (the manifest lists every one)."""

    worker: str
    rank: int | None = None
    backend: str = "local"
    device: str = "cpu"
    precision: str = "fp32"
    units: int = 0
    rows: int = 0
    scored: int = 0
    errors: int = 0
    chunks: int = 0
    tokens: int = 0
    oom_splits: int = 0  # batches split in half after running out of device memory
    seconds: float = 0.0
    started_at: float = 0.0
    finished_at: float | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    prep_workers: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add_counts(self, counts: dict[str, Any]) -> None:
        for key in COUNT_FIELDS:
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerRecord:
        values, extra = _split(cls, data)
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class ManifestRecord:
    """``manifest.json``: what the job's last finished run reports (counts over every finished unit, this
    run's workers and rates, the model with its training data, the config). Written by inference/manifest.py;
    read by reruns (``complete``) and by ``newsimpact signals`` (``model.training_data``)."""

    complete: bool = False
    inputs: list[str] = field(default_factory=list)
    output_dir: str = ""
    units: dict[str, int] = field(default_factory=dict)  # total, done, this_run, in_progress_elsewhere
    rows: int = 0
    scored: int = 0
    errors: int = 0
    chunks: int = 0
    this_run: dict[str, Any] = field(default_factory=dict)  # counts, wall_seconds, rates, workers
    planning_seconds: float | None = None
    precision: str | None = None
    model: dict[str, Any] = field(default_factory=dict)  # dir, name, hash, training_data
    config: dict[str, Any] = field(default_factory=dict)
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def training_data(self) -> dict[str, Any] | None:
        """The sources, splits and date ranges the model learned from (None: not recorded)."""
        value = self.model.get("training_data")
        return dict(value) if isinstance(value, dict) else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRecord:
        values, extra = _split(cls, data)
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)
