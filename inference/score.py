"""Score news archives with an exported model: ``python -m inference.score model_dir=DIR input=GLOB output_dir=OUT``.

Several workers share one job (docs/DESIGN.md section 6, inference/jobs.py): ``torchrun --nproc_per_node=N -m
inference.score ...`` (or ``accelerate launch``), the same command started N times on one shared
``output_dir`` (a SLURM array, preemptible nodes, several machines), or ``inference.backend=ray`` on a Ray
cluster (inference/ray_backend.py). Files are cut into work units without reading their bodies
(inference/readers.py); each worker claims the next unfinished unit when it is free. A unit's
``part-*.parquet`` (and its ``errors-*.jsonl``) is written to a temporary name and renamed into place when
complete, so a part exists only whole; a rerun of the same command scores only what is not done. Rows
that cannot be scored go to the errors file with the file, their location (byte offset or row number), a
truncated copy and the reason; scored + errors = rows read. ``manifest.json`` (with what every worker of
this run did) and ``_SUCCESS`` appear when every unit is done.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from inference import jobs
from inference.manifest import (  # noqa: F401  (re-exported: the scorer's API in one place)
    finish,
    job_identity,
    open_job,
    summarize,
    summary_table,
)
from inference.options import (  # noqa: F401
    InferenceOptions,
    OutputOptions,
    RayOptions,
    RunOptions,
    ScoreConfig,
    validate_score_config,
)
from inference.parts import PartWriter, Progress  # noqa: F401  (re-exported: inference.score.*)
from inference.runner import configure_process
from inference.worker import (  # noqa: F401
    LostClaim,
    _device,
    build_scorer,
    new_worker_record,
    prep_workers,
    score_unit,
    to_article,
    work,
    worker_precision,
    worker_threads,
)
from training.config import ConfigError, entry_point, exit_on_config_error, load_validated

log = logging.getLogger("newsimpact.score")


# -- distributed plumbing (torchrun / accelerate launch) ---------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) as torchrun and accelerate launch set them."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _init_dist(world: int, timeout_s: int) -> bool:
    if world <= 1 or not torch.distributed.is_available():
        return False
    # The model is not sharded and work is claimed through the output folder: the process group only
    # lets rank 0 plan first and report for all ranks at the end, so gloo serves on CPU and GPU alike.
    # A long timeout lets ranks that finish early wait for the others.
    torch.distributed.init_process_group("gloo", timeout=dt.timedelta(seconds=timeout_s))
    return True


def _barrier(active: bool) -> None:
    if active:
        torch.distributed.barrier()


def run(config: ScoreConfig, files: list[str], single_process: bool = False) -> dict[str, Any]:
    """Score the inputs as one worker of the job in ``output_dir``; returns the manifest.

    ``single_process``: ignore a launcher's RANK/WORLD_SIZE (a training job scoring its teacher targets).
    """
    # single_process (a distillation teacher pass inside a DDP job): one worker, on this rank's own GPU
    rank, world, local_rank = (0, 1, _dist_env()[2]) if single_process else _dist_env()
    opts = config.inference
    out = Path(config.output_dir)
    if opts.backend == "ray":
        from inference.ray_backend import run_ray

        return run_ray(config, files)  # each actor resolves its device and precision where it runs
    device = _device(opts, local_rank)
    precision = worker_precision(opts.precision, device, None)
    dist = _init_dist(world, opts.dist_timeout_s)
    configure_process(device, opts.keep_heap, threads=worker_threads(opts, device))
    try:
        problem: list[str] | None = None
        if rank == 0:  # plans (and replaces, with overwrite) before the other ranks look
            try:
                open_job(config, files, out, precision)
                # a rerun of a finished job: its manifest lists this run's workers; units whose files
                # changed since they were done are scored again
                for line in jobs.begin_run(out, opts.verify):
                    log.warning(line)
            except ConfigError as err:
                problem = err.problems
        if dist:
            box = [problem]
            torch.distributed.broadcast_object_list(box, src=0)
            problem = box[0]
        if problem:
            raise ConfigError(problem)
        if rank != 0:
            config.inference.overwrite = False
        job = open_job(config, files, out, precision)
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
        record = new_worker_record(
            jobs.worker_id(rank if world > 1 else None),
            rank if world > 1 else None,
            "local",
            device,
            precision,
        )
        work(config, out, job, record, show_progress=rank == 0)
        _barrier(dist)  # under torchrun, rank 0 reports once every rank is done
        manifest: Any = finish(config, out, job, files) if rank == 0 or not dist else None
        if dist:
            box = [manifest]
            torch.distributed.broadcast_object_list(box, src=0)
            manifest = box[0]
        return dict(manifest)
    finally:
        if dist:
            torch.distributed.destroy_process_group()


@entry_point("score")
def main(cfg: DictConfig) -> None:
    config, files = load_validated(cfg, ScoreConfig, validate_score_config)
    try:
        exit_on_config_error(lambda: run(config, files))
    except RuntimeError as err:
        print(f"newsimpact: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if _dist_env()[1] > 1:
        # A torchrun worker whose job is done (manifest written, process group destroyed) leaves without
        # the interpreter's teardown: destroying gloo's C++ state during it aborted a rank now and then
        # ("terminate called without an active exception", SIGABRT after "_SUCCESS written"), turning a
        # finished job into a failed launch.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
