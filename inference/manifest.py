"""The job's identity, its plan in the output folder, and its manifest: what a run reports when it ends.

A job is the model, the inputs and the value-changing options (:func:`job_identity`); :func:`open_job`
publishes it once (or refuses a folder that holds another job); :func:`finish` writes ``manifest.json``
(every worker of this run, counts over every finished unit) and ``_SUCCESS`` when every unit is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from inference import jobs
from inference.job_records import JobRecord, ManifestRecord, WorkerRecord
from inference.options import OutputOptions, ScoreConfig
from inference.readers import plan_units
from inference.runner import model_fingerprint
from inference.worker import _now
from training import model_meta
from training.config import ConfigError
from training.packaged_models import packaged_name

log = logging.getLogger("newsimpact.score")


# -- the job ------------------------------------------------------------------------------------------
def job_identity(config: ScoreConfig, files: list[str], precision: str) -> dict[str, Any]:
    """What must match for parts in one output_dir to belong to one job: the model, the inputs and the
    :class:`OutputOptions` (with ``precision`` resolved and the ticker map file by its content)."""
    opts = {f.name: getattr(config.inference, f.name) for f in fields(OutputOptions)}
    opts["precision"] = precision
    if opts["ticker_map_file"]:
        opts["ticker_map_file"] = hashlib.sha256(Path(opts["ticker_map_file"]).read_bytes()).hexdigest()[:16]
    return {"model": model_fingerprint(config.model_dir), "inputs": files, "options": opts}


def open_job(config: ScoreConfig, files: list[str], out: Path, precision: str) -> JobRecord:
    """The job in ``out``: planned and published here if the folder has none; refused if it holds
    another job (unless overwrite)."""
    identity = job_identity(config, files, precision)
    if config.inference.overwrite:
        jobs.reset_folder(out)
    previous = jobs.read_job(out)
    if previous is None:
        if out.exists() and any(out.glob("part-*.parquet")):
            raise ConfigError(
                [f"output_dir='{out}' has part files but no {jobs.JOB_FILE}; use a new output_dir"]
            )
        started = time.perf_counter()
        units = plan_units(files, config.inference.unit_rows)
        job = JobRecord(identity, units, _now(), round(time.perf_counter() - started, 3))
        previous = jobs.publish_job(out, job)
    if previous.identity != identity:
        differs = [k for k in identity if previous.identity.get(k) != identity[k]]
        detail = ""
        if "options" in differs:
            changed = [
                f"{k}: {previous.identity['options'].get(k)!r} -> {v!r}"
                for k, v in identity["options"].items()
                if previous.identity["options"].get(k) != v
            ]
            detail = f" ({'; '.join(changed)})"
        raise ConfigError(
            [
                f"output_dir='{out}' holds results of another job (different {', '.join(differs)}{detail}); "
                "use a new output_dir or pass inference.overwrite=true to replace them"
            ]
        )
    jobs.publish_job(out, previous)  # makes the bookkeeping folders of a job planned by an older version
    return previous


def summarize(out: Path, job: JobRecord) -> dict[str, int]:
    """Counts over every finished unit of the job (what the manifest reports)."""
    done = jobs.done_units(out)
    totals = {"rows": 0, "scored": 0, "errors": 0, "chunks": 0}
    for unit in job.units:
        record = done.get(unit.name)
        if record is not None:
            for key in totals:
                totals[key] += getattr(record, key)
    return totals


def finish(config: ScoreConfig, out: Path, job: JobRecord, files: list[str]) -> dict[str, Any]:
    """Write the manifest (every worker of this run, counts over every finished unit) and, when every
    unit is done, ``_SUCCESS``. Serialised between workers that end together; the last one's is whole."""
    with jobs.job_lock(out):
        done = jobs.done_units(out)
        units = job.units
        totals = summarize(out, job)
        complete = all(u.name in done for u in units)
        workers = jobs.this_run_workers(out)
        elsewhere = 0
        if not complete:
            claims = {p.stem for p in (out / jobs.CLAIMS).glob("*.json")}
            elsewhere = sum(1 for u in units if u.name not in done and u.name in claims)
        manifest = _manifest(config, out, job, files, totals, len(done), complete, workers, elsewhere)
        jobs.atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
        rate = totals["errors"] / totals["rows"] if totals["rows"] else 0.0
        failed = config.inference.max_error_rate is not None and rate > config.inference.max_error_rate
        if complete:
            for leftover in ("_progress", jobs.CLAIMS):
                for path in (out / leftover).glob("*.json"):
                    path.unlink(missing_ok=True)
            if not failed:
                (out / "_SUCCESS").write_text(_now() + "\n")
    print(summary_table(manifest, rate), file=sys.stderr)
    if failed:
        raise RuntimeError(
            f"error rate {rate:.2%} exceeds inference.max_error_rate={config.inference.max_error_rate}; "
            f"see {out}/errors-*.jsonl"
        )
    return manifest


def _manifest(
    config: ScoreConfig,
    out: Path,
    job: JobRecord,
    files: list[str],
    totals: dict[str, int],
    n_done: int,
    complete: bool,
    workers: list[WorkerRecord],
    elsewhere: int,
) -> dict[str, Any]:
    started = min((w.started_at for w in workers), default=None)
    ended = max((w.finished_at or w.started_at for w in workers), default=None)
    seconds = (ended - started) if started is not None and ended is not None else 0.0
    rows = sum(w.rows for w in workers)
    tokens = sum(w.tokens for w in workers)
    shown = ("worker", "rank", "backend", "device", "precision", "rows", "units", "seconds", "oom_splits")
    optional = ("load_seconds", "warmup_seconds", "prep_workers")
    manifest = ManifestRecord(
        complete=complete,
        inputs=files,
        output_dir=str(out.resolve()),
        units={
            "total": len(job.units),
            "done": n_done,
            "this_run": sum(w.units for w in workers),
            "in_progress_elsewhere": elsewhere,
        },
        rows=totals["rows"],
        scored=totals["scored"],
        errors=totals["errors"],
        chunks=totals["chunks"],
        this_run={
            "rows": rows,
            "errors": sum(w.errors for w in workers),
            "chunks": sum(w.chunks for w in workers),
            "tokens": tokens,
            "wall_seconds": round(seconds, 2),
            "articles_per_s": round(rows / seconds, 2) if seconds else None,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "processes": len(workers),
            "oom_splits": sum(w.oom_splits for w in workers),
            "workers": [
                {k: getattr(w, k) for k in shown}
                | {k: getattr(w, k) for k in optional if getattr(w, k) is not None}
                for w in workers
            ],
        },
        planning_seconds=job.planning_seconds,
        precision=job.precision,
        model={
            "dir": str(Path(config.model_dir).resolve()),
            "name": packaged_name(config.model_dir),  # a packaged model's name (card ...), else null
            "hash": job.identity["model"],
            # the sources, splits and date ranges it learned from: `newsimpact signals` evaluates off them
            "training_data": model_meta.read(config.model_dir).training_data,
        },
        config=asdict(config),
        finished_at=_now(),
    )
    return manifest.to_dict()


def summary_table(m: dict[str, Any], rate: float) -> str:
    run_ = m["this_run"]
    if m["complete"]:
        state = "complete, _SUCCESS written"
    elif m["units"]["in_progress_elsewhere"]:
        state = f"other workers are scoring {m['units']['in_progress_elsewhere']} unit(s); the last one writes _SUCCESS"
    else:
        state = "INCOMPLETE: rerun the same command"
    lines = [
        "",
        "newsimpact scoring summary",
        f"  rows read        {m['rows']:>12,}",
        f"  scored           {m['scored']:>12,}",
        f"  errors           {m['errors']:>12,}  ({rate:.2%})",
        f"  chunks           {m['chunks']:>12,}",
        f"  units            {m['units']['done']:>6}/{m['units']['total']:<5} ({m['units']['this_run']} this run)",
        f"  wall time        {run_['wall_seconds']:>12.1f} s  ({run_['processes']} worker(s), {m['precision']})",
        f"  throughput       {run_['articles_per_s'] or 0:>12,.1f} articles/s, {run_['tokens_per_s'] or 0:,.0f} tokens/s",
    ]
    busy = [w for w in run_["workers"] if w["units"]]
    if len(busy) > 1:
        slow = max(busy, key=lambda w: w["seconds"])
        fast = min(busy, key=lambda w: w["seconds"])
        lines.append(
            f"  workers          slowest {slow['worker']} {slow['seconds']:.1f} s ({slow['units']} units), "
            f"fastest {fast['worker']} {fast['seconds']:.1f} s ({fast['units']} units)"
        )
    lines.append(f"  output           {m['output_dir']}  ({state})")
    return "\n".join(lines)
