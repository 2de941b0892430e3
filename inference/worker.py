"""One scoring worker: rows -> windows -> batches -> part files, unit after unit.

Local processes (torchrun ranks, independent processes) and Ray actors run the same code: claim a unit
(inference/jobs.py), read its rows (inference/readers.py), prepare windows ahead of the model
(inference/prep.py), score them (inference/engine.py), write the part and errors files atomically, then
the unit's done record with each file's size and SHA-256.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from inference import jobs
from inference.engine import Scorer
from inference.job_records import DoneRecord, JobRecord, WorkerRecord
from inference.options import InferenceOptions, ScoreConfig
from inference.parts import Counts, PartWriter, Progress, _part_counts
from inference.prep import Article, PrepPool, default_prep_workers, load_ticker_map
from inference.readers import BadRow, Unit, read_unit
from inference.runner import resolve_precision
from training.config import ConfigError

log = logging.getLogger("newsimpact.score")


# -- rows -------------------------------------------------------------------------------------------
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def to_article(row: dict[str, Any], opts: InferenceOptions) -> Article | str:
    """A readable row as an Article, or the reason it cannot be scored."""
    if opts.text_column not in row:
        return f"missing '{opts.text_column}' field"
    text = row[opts.text_column]
    if text is None:
        return f"'{opts.text_column}' is null"
    if not isinstance(text, str):
        return f"'{opts.text_column}' is a {type(text).__name__}, not a string"
    if not text.strip():
        return f"'{opts.text_column}' is blank"
    raw_id = row.get(opts.id_column)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return f"missing '{opts.id_column}' field"
    tickers = row.get(opts.tickers_column)
    if isinstance(tickers, str):
        tickers = [t.strip().lstrip("$") for t in tickers.replace(";", ",").split(",") if t.strip()]
    elif tickers is not None and not (isinstance(tickers, list) and all(isinstance(t, str) for t in tickers)):
        return f"'{opts.tickers_column}' must be a list of strings or a comma-separated string"
    extra = {col: row.get(col) for col in opts.keep_columns}
    return Article(str(raw_id), text, tickers, extra)


def _error(unit: Unit, location: int, reason: str, raw: Any) -> dict[str, Any]:
    copy = raw if isinstance(raw, str) else json.dumps(raw, default=str, ensure_ascii=False)
    if len(copy) > 1000:
        copy = copy[:1000] + f"... [{len(copy) - 1000} more characters]"
    # Byte ranges know where a row is, not how many rows come before it.
    where = "offset" if unit.kind == "bytes" else "row"
    return {"file": unit.path, where: location, "reason": reason, "raw": copy}


def _windows(
    unit: Unit, rows: Iterator[tuple[int, Any]], opts: InferenceOptions, errors: list[dict[str, Any]]
) -> Iterator[list[Article]]:
    """Articles in windows of ``opts.window``; the first is an eighth of that, so the model starts
    after tokenizing a few articles instead of a whole window (later windows are tokenized in the
    background while the model runs)."""
    window: list[Article] = []
    size = max(1, opts.window // 8)
    for location, row in rows:
        if isinstance(row, BadRow):
            errors.append(_error(unit, location, row.reason, row.raw))
            continue
        article = to_article(row, opts)
        if isinstance(article, str):
            errors.append(_error(unit, location, article, row))
            continue
        window.append(article)
        if len(window) >= size:
            yield window
            window, size = [], opts.window
    if window:
        yield window


class LostClaim(RuntimeError):
    """Another worker took over this unit (our claim expired): its parts are theirs to write."""


def _segments(
    unit: Unit, opts: InferenceOptions, out: Path
) -> tuple[list[str], int, Iterator[tuple[str, Any]]]:
    """(parts already in place, rows they cover, the unit's remaining rows as (part name, rows) pieces).

    A byte range or row-group unit is one part. A stream (a compressed file, read once) is cut into a
    part per ``unit_rows`` input rows, so a killed stream resumes after its last whole part."""
    columns = [opts.id_column, opts.text_column, opts.tickers_column, *opts.keep_columns]
    if unit.kind != "stream":
        return [], 0, iter([(unit.name, read_unit(unit, columns))])
    done: list[str] = []
    while (out / f"part-{unit.file_index:05d}-{len(done):05d}.parquet").exists():
        done.append(f"{unit.file_index:05d}-{len(done):05d}")
    skip = len(done) * opts.unit_rows
    rows = read_unit(unit, columns, skip=skip)

    def pieces() -> Iterator[tuple[str, Any]]:
        index = len(done)
        while True:
            head = next(rows, None)
            if head is None:
                if index == 0:
                    yield f"{unit.file_index:05d}-00000", iter(())  # an empty file: one empty part
                return  # (index > 0: killed after its last part, before its done record)
            # Each piece is read to its end before the next one is asked for.
            yield (
                f"{unit.file_index:05d}-{index:05d}",
                itertools.chain([head], itertools.islice(rows, opts.unit_rows - 1)),
            )
            index += 1

    return done, skip, pieces()


def score_unit(
    scorer: Scorer,
    unit: Unit,
    opts: InferenceOptions,
    out: Path,
    pool: PrepPool,
    progress: Progress,
    claim: jobs.Claim | None = None,
    worker: str = "",
) -> dict[str, Any]:
    """Score one unit, publish its parts (and errors) atomically, then its done record. Returns the
    counts of what this call scored."""
    started = time.perf_counter()
    parts, _, pieces = _segments(unit, opts, out)
    counts, here = (
        Counts(),
        Counts(),
    )  # the unit's, and what this call scored (not a resumed stream's earlier parts)
    for name in parts:
        counts += _part_counts(out, name)
    for name, rows in pieces:
        piece = _score_piece(scorer, unit, name, rows, opts, out, pool, progress, claim)
        counts += piece
        here += piece
        parts.append(name)
    if claim is not None and not claim.still_mine():
        raise LostClaim(unit.name)
    seconds = round(time.perf_counter() - started, 3)
    written = [f"part-{name}.parquet" for name in parts] + [
        f"errors-{name}.jsonl" for name in parts if (out / f"errors-{name}.jsonl").exists()
    ]
    record = DoneRecord(
        parts=[f"part-{name}.parquet" for name in parts],
        files={f: jobs.file_record(out / f) for f in written},  # checked by the next run (verify)
        rows=counts.rows,
        scored=counts.scored,
        errors=counts.errors,
        chunks=counts.chunks,
        tokens=counts.tokens,
        worker=worker,
        seconds=seconds,
    )
    jobs.mark_done(out, unit, record)
    return {**here.as_dict(), "seconds": seconds}


def _score_piece(
    scorer: Scorer,
    unit: Unit,
    name: str,
    rows: Iterator[tuple[int, Any]],
    opts: InferenceOptions,
    out: Path,
    pool: PrepPool,
    progress: Progress,
    claim: jobs.Claim | None,
) -> Counts:
    errors: list[dict[str, Any]] = []
    writer = PartWriter(out / f"part-{name}.parquet", opts.keep_columns, opts.embeddings)
    scored_rows = chunks = tokens = 0
    windows = _windows(unit, rows, opts, errors)
    try:
        # Windows are prepared ahead (prep worker processes or a background thread: inference/prep.py)
        # while the model runs on the current one.
        for window, prepared in pool.prepared(windows):
            writer.write(scorer.score(window, prepared))
            scored_rows += len(window)
            chunks += len(prepared.chunks)
            tokens += prepared.tokens
            progress.add(len(window), prepared.tokens)
        progress.add(len(errors), 0)
        writer.close()
        if claim is not None and not claim.still_mine():
            raise LostClaim(unit.name)
    except BaseException:
        writer.discard()
        raise
    if errors:
        err_path = out / f"errors-{name}.jsonl"
        jobs.atomic_write_text(err_path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors))
    writer.commit()
    return Counts(scored_rows + len(errors), scored_rows, len(errors), chunks, tokens)


def _device(opts: InferenceOptions, local_rank: int) -> str:
    """This worker's device: GPUs are shared round-robin by local rank, so more workers than GPUs (e.g.
    ``torchrun --nproc_per_node=4`` on one GPU: four workers preparing batches for it) is fine."""
    wants_gpu = opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available())
    if not wants_gpu:
        return "cpu" if opts.device == "auto" else opts.device
    return f"cuda:{local_rank % max(1, torch.cuda.device_count())}"


def worker_threads(opts: InferenceOptions, device: str) -> int | None:
    """CPU threads of a GPU worker (torch and the tokenizer's batch encoding): ``inference.threads``, or
    the cores this process may use divided among the workers of this host (LOCAL_WORLD_SIZE under
    torchrun). None on CPU, where the launcher's and configure_process's settings stand."""
    if opts.threads is not None:
        return opts.threads
    if not device.startswith("cuda"):
        return None
    return max(1, _usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prep_workers(opts: InferenceOptions, device: str) -> int:
    """Prep processes of this worker: ``inference.prep_workers``, else on a GPU its share of the host's
    cores (:func:`worker_threads`) minus the one that drives the model, and on a CPU 0 (the background
    thread): there the model itself wants every core, and a prep process only competes with it (the
    scorer was slower with one on the 2-core box: docs/experiments/datapath.md)."""
    if opts.prep_workers is not None:
        return opts.prep_workers
    threads = worker_threads(opts, device)
    return default_prep_workers(threads) if threads is not None and device.startswith("cuda") else 0


def worker_precision(requested: str, device: str, job_precision: str | None) -> str:
    """The precision this worker runs: ``auto`` resolved here, on the worker's own device (a Ray actor
    on a GPU node resolves for its GPU, not for the driver). A worker that would run another precision
    than the job in the output folder was planned with stops, naming both."""
    precision = resolve_precision(requested, device)
    if job_precision is not None and precision != job_precision:
        raise ConfigError(
            [
                f"inference.precision={requested} resolves to {precision} on this worker ({device}), but the "
                f"job was planned with {job_precision}; set inference.precision={job_precision} explicitly "
                "so every worker computes the same values"
            ]
        )
    return precision


def build_scorer(config: ScoreConfig, device: str, precision: str) -> Scorer:
    opts = config.inference
    return Scorer(
        config.model_dir,
        device=device,
        precision=precision,
        compile=opts.compile,
        batch_tokens=opts.batch_tokens,
        max_batch_size=opts.max_batch_size,
        pad_to_multiple_of=opts.pad_to_multiple_of,
        attention=opts.attention,
        max_chunks=opts.max_chunks,
        stride=opts.stride,
        impact_aggregation=opts.impact_aggregation,
        sentiment_aggregation=opts.sentiment_aggregation,
        topic_threshold=opts.topic_threshold,
        ticker_map=load_ticker_map(opts.ticker_map_file, opts.ticker_map, opts.ticker_names),
        embeddings=opts.embeddings,
    )


def new_worker_record(
    worker: str, rank: int | None, backend: str, device: str, precision: str
) -> WorkerRecord:
    return WorkerRecord(worker, rank, backend, device, precision, started_at=time.time())


def work(
    config: ScoreConfig, out: Path, job: JobRecord, record: WorkerRecord, show_progress: bool
) -> WorkerRecord:
    """Claim and score units until none is left for this worker; returns its record (also written)."""
    opts = config.inference
    order = jobs.claim_order(job.units)
    start = time.perf_counter()
    scorer: Scorer | None = None
    pool: PrepPool | None = None
    progress = Progress(out, record.worker, len(order), show_progress and opts.progress)
    try:
        while (claimed := jobs.claim_next(out, order, record.worker, opts.claim_timeout_s)) is not None:
            unit, claim = claimed
            try:
                if scorer is None or pool is None:  # only a worker that has work loads the model
                    loading = time.perf_counter()
                    scorer = build_scorer(config, record.device, record.precision)
                    record.prep_workers = prep_workers(opts, record.device)
                    pool = PrepPool(scorer.preparer, record.prep_workers)
                    if opts.compile or record.device.startswith("cuda"):
                        record.warmup_seconds = round(scorer.warmup(), 3)
                    # model load and warm-up are not scoring time (the manifest's wall time and rates)
                    start += time.perf_counter() - loading
                    record.started_at += time.perf_counter() - loading
                    record.load_seconds = round(time.perf_counter() - loading, 3)
                jobs.clean_unit_leftovers(out, unit)
                counts = score_unit(scorer, unit, opts, out, pool, progress, claim, record.worker)
            except LostClaim:
                log.warning("unit %s was taken over by another worker; leaving it to them", unit.name)
                continue
            finally:
                claim.release()
            record.units += 1
            record.add_counts(counts)
    finally:
        if pool is not None:
            pool.close()
    progress.close()
    record.oom_splits = scorer.oom_splits if scorer is not None else 0
    record.seconds = round(time.perf_counter() - start, 3)
    record.finished_at = time.time()
    jobs.write_worker(out, record)
    return record
