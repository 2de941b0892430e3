"""``inference.backend=ray``: the same scorer as an actor pool over Ray Data, for clusters.

The job's unfinished work units become a Ray Dataset (one block per unit, biggest first) mapped by a pool
of scorer actors (one per GPU, or per ``cpus_per_actor`` CPU slots); Ray's streaming executor hands the
next unit to whichever actor is free. Each actor reads its unit itself (the same streaming readers,
only its own bytes) and writes the same parts, errors files and done records into ``output_dir`` (a
folder every node sees), holding the same claims as any other worker, so the exactly-once-on-rerun
contract and mixing with torchrun or independent workers on one folder are unchanged. The driver writes
one worker record per actor and the manifest.

Why units, not ``ray.data.read_json``/``read_parquet`` rows: Ray's readers fail a whole read on one
malformed row, know no byte offsets for the errors file, and write their own file names, so a rerun
after a kill could neither skip finished work nor avoid duplicates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from inference import jobs
from inference.job_records import JobRecord, WorkerRecord
from inference.parts import COUNT_KEYS
from inference.prep import PrepPool
from inference.readers import Unit
from inference.runner import configure_process
from training.config import ConfigError

log = logging.getLogger("newsimpact.score")
_COUNTS = COUNT_KEYS


class UnitScorer:
    """A Ray Data actor: loads the model once, then scores the units it is handed."""

    def __init__(self, config: Any, job: JobRecord, precision: str, threads: int):
        from inference.parts import Progress
        from inference.worker import build_scorer, new_worker_record

        self.config, self.job = config, job
        self.out = Path(config.output_dir)
        from inference.worker import worker_precision

        device = _actor_device()
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        configure_process(device, config.inference.keep_heap, threads=threads if device != "cpu" else None)
        precision = worker_precision(config.inference.precision, device, precision)
        self.record = new_worker_record(f"ray-{jobs.worker_id()}", None, "ray", device, precision)
        self.scorer = build_scorer(config, device, precision)
        if device != "cpu" or config.inference.compile:
            self.record.warmup_seconds = round(self.scorer.warmup(), 3)
        from inference.prep import default_prep_workers

        mode = config.inference.ray.prep
        if mode == "tasks" or (mode == "auto" and device != "cpu"):
            # Ray's batch-inference split: windows prepared by CPU tasks anywhere in the cluster, the model here
            self.pool: PrepPool = RayTaskPrep(self.scorer.preparer, config.inference.ray.prep_tasks_in_flight)
            self.record.prep_workers = config.inference.ray.prep_tasks_in_flight
            self.record.extra["prep"] = "ray_tasks"
        else:
            # the actor's CPU slots: one drives the model, the rest prepare windows (inference.prep_workers)
            workers = config.inference.prep_workers
            if (
                workers is None
            ):  # as inference.score.prep_workers: processes for a GPU actor, the thread on CPU
                workers = default_prep_workers(max(1, threads)) if device != "cpu" else 0
            self.record.prep_workers = workers
            self.pool = PrepPool(self.scorer.preparer, workers)
        self.progress = Progress(self.out, self.record.worker, 0, enabled=False)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from inference.worker import LostClaim, score_unit

        unit = Unit(**{k: row[k] for k in ("file_index", "path", "index", "kind", "start", "end", "cost")})
        result: dict[str, Any] = {"unit": unit.name, "worker": self.record.worker, "scored_here": False}
        result.update(dict.fromkeys(_COUNTS, 0), seconds=0.0, device=self.record.device, oom_splits=0)
        result.update(prep=self.record.extra.get("prep", "actor"), prep_workers=self.record.prep_workers)
        opts = self.config.inference
        claim = jobs.try_claim(self.out, unit, self.record.worker, opts.claim_timeout_s)
        if claim is None or unit.name in jobs.done_units(self.out):
            if claim is not None:
                claim.release()
            return result  # another worker has it (or finished it meanwhile)
        try:
            jobs.clean_unit_leftovers(self.out, unit)
            counts = score_unit(
                self.scorer, unit, opts, self.out, self.pool, self.progress, claim, self.record.worker
            )
        except LostClaim:
            return result
        finally:
            claim.release()
        result.update({k: counts[k] for k in _COUNTS}, seconds=counts["seconds"], scored_here=True)
        result["oom_splits"] = self.scorer.oom_splits
        return result


def _prepare_task(preparer: Any, pairs: list[tuple[str, list[str] | None]]) -> Any:
    return preparer(pairs)


class RayTaskPrep(PrepPool):
    """Windows prepared by Ray tasks (one CPU each, scheduled anywhere in the cluster) while the actor's
    model scores the ones before: ``in_flight`` windows ahead, in input order. The preparer (tokenizer and
    text options) is put in the object store once; a prepared window travels back packed (one ids array)."""

    def __init__(self, preparer: Any, in_flight: int):
        import ray

        super().__init__(preparer, workers=max(1, in_flight), first_in_thread=False)
        self.ref = ray.put(preparer)
        self.task = ray.remote(num_cpus=1)(_prepare_task)

    def submit(self, window: list[Any], first: bool = False) -> Any:
        pairs = [(a.text, a.tickers) for a in window]
        return self.task.remote(self.ref, pairs).future()  # a concurrent.futures.Future


def ray_gpu_ids() -> list[Any]:
    import ray

    try:
        return list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return []


def run_ray(config: Any, files: list[str]) -> dict[str, Any]:
    """Plan (or reopen) the job, score its unfinished units on a Ray actor pool, write the manifest.

    ``inference.precision=auto`` is resolved where the actors run: a probe task with an actor's
    resources resolves it for the job's identity (a CPU head node must not give GPU actors fp32), and
    each actor resolves it again on its own device and checks that it agrees."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(
            ["inference.backend=ray needs Ray Data: pip install 'newsimpact[ray]' (or 'ray[data]')"]
        ) from None
    from inference.manifest import finish, open_job
    from inference.worker import new_worker_record

    opts = config.inference
    out = Path(config.output_dir)
    started = time.time()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=opts.ray.address,
            num_cpus=opts.ray.num_cpus if opts.ray.address is None else None,
            include_dashboard=False,
            log_to_driver=True,
        )
    try:
        per_gpu = _gpus_per_actor(opts.ray)
        probe = ray.remote(_actor_precision).options(
            num_cpus=opts.ray.cpus_per_actor, num_gpus=per_gpu or None
        )
        precision = ray.get(probe.remote(opts.precision))
        job = open_job(config, files, out, precision)
        for line in jobs.begin_run(out, opts.verify):  # units whose files changed: scored again
            log.warning(line)
        done = jobs.done_units(out)
        todo = [u for u in jobs.claim_order(job.units) if u.name not in done]
        results = _score_on_actors(config, job, precision, todo, per_gpu) if todo else []
    finally:
        if started_here:
            ray.shutdown()
    by_worker: dict[str, WorkerRecord] = {}
    for r in results:
        if not r["scored_here"]:
            continue
        record = by_worker.setdefault(
            r["worker"], new_worker_record(r["worker"], None, "ray", r["device"], precision)
        )
        record.started_at = started
        record.units += 1
        record.seconds = round(record.seconds + r["seconds"], 3)
        record.add_counts(r)
        record.oom_splits = max(record.oom_splits, int(r.get("oom_splits", 0)))  # a running total
        record.prep_workers, record.extra["prep"] = r.get("prep_workers"), r.get("prep", "actor")
    for record in by_worker.values():
        record.finished_at = time.time()
        jobs.write_worker(out, record)
    return finish(config, out, job, files)


def _actor_device() -> str:
    return "cuda:0" if torch.cuda.is_available() and ray_gpu_ids() else "cpu"


def _actor_precision(requested: str) -> str:
    """``requested`` resolved on an actor's device (run as a Ray task with an actor's resources)."""
    from inference.runner import resolve_precision

    return resolve_precision(requested, _actor_device())


def _gpus_per_actor(opts: Any) -> float:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    return opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if gpus else 0.0)


def _actors_leaving_cpus_for_tasks(actors: int, cpus: float, opts: Any) -> int:
    """Preparation tasks need CPUs the actors do not hold (an actor waits on its tasks: with every CPU
    taken by actors they would never be scheduled). Fewer actors where their number was derived; a
    one-line error where the user asked for them, or where not even one actor leaves a CPU free."""
    fitting = int((cpus - 1) // opts.cpus_per_actor)
    if actors <= fitting:
        return actors
    if opts.actors or fitting < 1:
        raise ConfigError(
            [
                f"inference.ray.prep=tasks: {actors} scorer actor(s) of {opts.cpus_per_actor} CPU(s) leave none "
                f"of the cluster's {cpus:g} CPUs to the preparation tasks; give Ray more CPUs "
                "(inference.ray.num_cpus), fewer actors (inference.ray.actors), or inference.ray.prep=actor"
            ]
        )
    log.info(
        "inference.ray.prep=tasks: %d scorer actor(s), so %g CPUs stay free for preparation",
        fitting,
        cpus - fitting * opts.cpus_per_actor,
    )
    return fitting


def _score_on_actors(
    config: Any, job: JobRecord, precision: str, todo: list[Unit], per_gpu: float
) -> list[dict[str, Any]]:
    import ray
    import ray.data

    opts = config.inference.ray
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    if opts.actors:
        actors = opts.actors
    elif per_gpu:
        actors = max(1, int(gpus / per_gpu))
    else:
        actors = max(1, int(float(resources.get("CPU", 1)) // opts.cpus_per_actor))
    if opts.prep == "tasks" or (opts.prep == "auto" and per_gpu):
        actors = _actors_leaving_cpus_for_tasks(actors, float(resources.get("CPU", 0)), opts)
    actors = min(actors, len(todo))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = config.inference.progress
    items = [
        {k: getattr(u, k) for k in ("file_index", "path", "index", "kind", "start", "end", "cost")}
        for u in todo
    ]
    # One block per unit: the streaming executor hands units out one at a time to free actors.
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    scored = dataset.map(
        UnitScorer,  # type: ignore[arg-type]  # a callable class: Ray runs it as an actor pool
        fn_constructor_kwargs={
            "config": config,
            "job": job,
            "precision": precision,
            "threads": opts.cpus_per_actor,
        },
        concurrency=actors,
        num_cpus=opts.cpus_per_actor,
        num_gpus=per_gpu or None,
    )
    return list(scored.iter_rows())
