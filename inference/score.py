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
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

from inference import jobs
from inference.engine import (
    PACKAGED_TICKER_MAPS,
    SENTIMENT_AGGREGATIONS,
    Article,
    Scorer,
    configure_process,
    load_ticker_map,
    model_fingerprint,
    resolve_precision,
)
from inference.prep import PrepPool, default_prep_workers
from inference.readers import BadRow, Unit, expand_inputs, plan_units, read_unit
from training.config import ConfigError, entry_point, exit_on_config_error, load_validated, register_schema
from training.modeling import META_FILE
from training.packaged_models import model_dir_problem, packaged_name, resolve_model_dir
from training.records import record_schema

log = logging.getLogger("newsimpact.score")


@dataclass
class OutputOptions:
    """Options that change the values written: a job's identity is made of these and the model.

    A rerun into an existing output_dir must repeat them (or pass ``overwrite``)."""

    id_column: str = "id"
    text_column: str = "text"
    tickers_column: str = "tickers"  # used when an input row has it; else tickers are extracted
    keep_columns: list[str] = field(default_factory=list)
    unit_rows: int = 5000  # rows per work unit (approximate for byte ranges); fixes the job's plan
    precision: str = "auto"  # auto (bf16 on GPUs and CPUs with native bf16, else fp32) | fp32 | bf16 | fp16
    max_chunks: int = 16
    stride: int | None = None  # tokens of overlap between chunks; null: the model folder's setting
    impact_aggregation: str = "max"  # max | mean
    # How the chunks of a long article combine into its sentiment and score: stance (length times the
    # chunk's non-neutral probability: boilerplate and balanced risk paragraphs count less), mean
    # (length-weighted: one polar sentence among neutral ones comes out neutral), first (the lede chunk).
    # docs/BENCHMARKS.md "Long articles": stance 0.60 accuracy over long documents, mean 0.35, first 0.55.
    sentiment_aggregation: str = "stance"
    topic_threshold: float = 0.5
    # company name -> ticker, e.g. inference.ticker_map={Alibaba: BABA}. Typed Any, checked in
    # validate_score_config: an override onto a typed dict node is a merge, which struct mode refuses for
    # new keys (and OmegaConf cannot merge into a null typed dict); onto an Any null it is an assignment.
    ticker_map: Any = None
    ticker_map_file: str | None = None
    # packaged company-name maps (us_stocknet: 86 US large caps; india_sentfin: 897 NSE companies), e.g.
    # inference.ticker_names=[us_stocknet]: tickers of articles that name the company without a cashtag
    ticker_names: list[str] = field(default_factory=list)
    # true: each record also gets "embedding", the article's pooled backbone state (float32 list, the
    # backbone's width; its chunks' states averaged like its sentiment): for search, clustering, or as a
    # distillation teacher's hidden-state target. Merged and adapter exports (an ONNX graph has no such output).
    embeddings: bool = False


@dataclass
class RayOptions:
    address: str | None = None  # null: start a local Ray instance on this machine; "auto": join a cluster
    num_cpus: int | None = None  # CPUs of a local instance (null: all)
    actors: int | None = None  # scorer actors; null: one per GPU of the cluster, else CPUs / cpus_per_actor
    cpus_per_actor: int = 1
    gpus_per_actor: float | None = None  # null: 1 where the cluster has GPUs, else 0


@dataclass
class RunOptions:
    """Options that change only speed or policy: a rerun may change them freely."""

    backend: str = "local"  # local: this process (or torchrun ranks, or independent processes) | ray
    window: int = 1024  # articles tokenized and length-sorted together
    batch_tokens: int | None = None  # padded tokens per forward pass; None: 4,096 on CPU, 16,384 on GPU
    max_batch_size: int = 256
    pad_to_multiple_of: int = 16  # batch lengths rounded up to this: few shapes keep CPU memory flat
    attention: str = "auto"  # auto (bmm on CPU in bf16, else SDPA) | sdpa | bmm
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile(dynamic=True), compiled in a warm-up before the job's timings
    # CPU threads per GPU worker (torch, tokenizer batch encoding); null: this host's cores / its workers
    threads: int | None = None
    # processes preparing windows ahead of the model (inference/prep.py); null: on a GPU the worker's
    # cores minus one, on a CPU 0; 0: one background thread of the scoring process
    prep_workers: int | None = None
    keep_heap: bool = True  # CPU, glibc: large tensors from a heap that keeps freed memory (faster)
    max_error_rate: float | None = None
    # what a run checks of the units already done: size (each file's byte size, cheap) | full (SHA-256 too)
    verify: str = "size"
    overwrite: bool = False
    progress: bool = True
    claim_timeout_s: int = 300  # a claim on another host untouched this long is taken over
    dist_timeout_s: int = 86400
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass
class InferenceOptions(OutputOptions, RunOptions):
    """``inference.*``: one flat group for users; the two bases say which options make the job identity
    (a new option has to be put in one of them)."""


@dataclass
class ScoreConfig:
    model_dir: str = "card"  # an exported model folder, or a packaged model's name (card, card-large)
    input: Any = "???"  # a glob, a path, or a list of them
    output_dir: str = "???"
    inference: InferenceOptions = field(default_factory=InferenceOptions)


register_schema("score_schema", ScoreConfig)


def validate_score_config(config: ScoreConfig) -> list[str]:
    """Check everything before work starts; returns the expanded input files."""
    problems: list[str] = []
    config.model_dir = resolve_model_dir(config.model_dir)
    if not (Path(config.model_dir) / META_FILE).exists():
        problems.append(model_dir_problem(config.model_dir))
    patterns = [config.input] if isinstance(config.input, str) else list(config.input)
    files = expand_inputs(patterns) if patterns else []
    if not files:
        problems.append(
            f"input='{config.input}' matches no file; check the path or glob (quote it in the shell)"
        )
    opts = config.inference
    if opts.precision not in ("auto", "fp32", "bf16", "fp16"):
        problems.append(f"inference.precision='{opts.precision}' must be auto, fp32, bf16 or fp16")
    if opts.verify not in ("size", "full"):
        problems.append(f"inference.verify='{opts.verify}' must be size or full")
    if opts.attention not in ("auto", "sdpa", "bmm"):
        problems.append(f"inference.attention='{opts.attention}' must be auto, sdpa or bmm")
    if opts.impact_aggregation not in ("max", "mean"):
        problems.append(f"inference.impact_aggregation='{opts.impact_aggregation}' must be max or mean")
    if opts.sentiment_aggregation not in SENTIMENT_AGGREGATIONS:
        problems.append(
            f"inference.sentiment_aggregation='{opts.sentiment_aggregation}' must be one of "
            + ", ".join(SENTIMENT_AGGREGATIONS)
        )
    if opts.backend not in ("local", "ray"):
        problems.append(f"inference.backend='{opts.backend}' must be local or ray")
    for key in (
        "unit_rows",
        "window",
        "batch_tokens",
        "max_batch_size",
        "max_chunks",
        "pad_to_multiple_of",
        "claim_timeout_s",
        "threads",
    ):
        if getattr(opts, key) is not None and getattr(opts, key) < 1:
            problems.append(f"inference.{key} must be >= 1")
    if opts.prep_workers is not None and opts.prep_workers < 0:
        problems.append("inference.prep_workers must be >= 0 (0: a background thread) or null (cores - 1)")
    if opts.max_error_rate is not None and not 0 <= opts.max_error_rate <= 1:
        problems.append("inference.max_error_rate must be in [0, 1] or null")
    if opts.ticker_map is not None and not (
        isinstance(opts.ticker_map, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in opts.ticker_map.items())
    ):
        problems.append(
            f"inference.ticker_map={opts.ticker_map!r} must map names to tickers: inference.ticker_map='{{Alibaba: BABA}}'"
        )
    for name in opts.ticker_names:
        if name not in PACKAGED_TICKER_MAPS:
            problems.append(
                f"inference.ticker_names: '{name}' is not a packaged map ({', '.join(PACKAGED_TICKER_MAPS)})"
            )
    if opts.ticker_map_file and not Path(opts.ticker_map_file).is_file():
        problems.append(f"inference.ticker_map_file='{opts.ticker_map_file}' does not exist")
    meta_file = Path(config.model_dir) / META_FILE
    if opts.embeddings and meta_file.exists() and json.loads(meta_file.read_text()).get("format") == "onnx":
        problems.append(
            f"inference.embeddings=true: model_dir='{config.model_dir}' is an ONNX export, whose graph outputs "
            "the heads only; score with a merged or adapter export (export.format=merged)"
        )
    if problems:
        raise ConfigError(problems)
    return files


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


# -- the job ------------------------------------------------------------------------------------------
def job_identity(config: ScoreConfig, files: list[str], precision: str) -> dict[str, Any]:
    """What must match for parts in one output_dir to belong to one job: the model, the inputs and the
    :class:`OutputOptions` (with ``precision`` resolved and the ticker map file by its content)."""
    opts = {f.name: getattr(config.inference, f.name) for f in fields(OutputOptions)}
    opts["precision"] = precision
    if opts["ticker_map_file"]:
        opts["ticker_map_file"] = hashlib.sha256(Path(opts["ticker_map_file"]).read_bytes()).hexdigest()[:16]
    return {"model": model_fingerprint(config.model_dir), "inputs": files, "options": opts}


def open_job(config: ScoreConfig, files: list[str], out: Path, precision: str) -> dict[str, Any]:
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
        job = {
            "identity": identity,
            "units": jobs.plan_record(units),
            "created_at": _now(),
            "planning_seconds": round(time.perf_counter() - started, 3),
        }
        previous = jobs.publish_job(out, job)
    if previous["identity"] != identity:
        differs = [k for k in identity if previous["identity"].get(k) != identity[k]]
        detail = ""
        if "options" in differs:
            changed = [
                f"{k}: {previous['identity']['options'].get(k)!r} -> {v!r}"
                for k, v in identity["options"].items()
                if previous["identity"]["options"].get(k) != v
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


def _table(records: list[dict[str, Any]], keep_columns: list[str], embedding: bool = False) -> pa.Table:
    keep_fields = []
    for col in keep_columns:
        try:
            keep_fields.append(pa.field(col, pa.array([r.get(col) for r in records]).type))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Mixed types in a passed-through column: keep them as JSON text rather than fail the unit.
            for r in records:
                r[col] = json.dumps(r.get(col), default=str)
            keep_fields.append(pa.field(col, pa.string()))
    return pa.Table.from_pylist(records, schema=record_schema(keep_fields, embedding))


class PartWriter:
    """Streams a part's records into a temporary parquet file (a row group per window), then renames it.

    Memory stays bounded by the window, not the unit. Kept columns take their type from the first
    window; later values of a text-typed kept column are stored as JSON text.
    """

    def __init__(self, part: Path, keep_columns: list[str], embedding: bool = False):
        self.part = part
        self.embedding = embedding
        self.tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}")
        self.keep = keep_columns
        self.writer: pq.ParquetWriter | None = None

    def write(self, records: list[dict[str, Any]]) -> None:
        if self.writer is None:
            table = _table(records, self.keep, self.embedding)
            self.writer = pq.ParquetWriter(self.tmp, table.schema)
        else:
            schema = self.writer.schema
            for col in self.keep:
                if schema.field(col).type == pa.string():
                    for r in records:
                        if r.get(col) is not None and not isinstance(r[col], str):
                            r[col] = json.dumps(r[col], default=str)
            try:
                table = pa.Table.from_pylist(records, schema=schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
                raise ValueError(
                    f"inference.keep_columns: a kept column changes type inside one work unit ({err}); "
                    "drop it from keep_columns or make its values one type"
                ) from None
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is None:
            pq.write_table(_table([], self.keep, self.embedding), self.tmp)
        else:
            self.writer.close()

    def commit(self) -> None:
        self.tmp.replace(self.part)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


class LostClaim(RuntimeError):
    """Another worker took over this unit (our claim expired): its parts are theirs to write."""


class Progress:
    """A bar over the job's units with every worker's articles/s: each worker publishes its counts in
    output_dir/_progress/, the bar reads them (one bar per torchrun job, on rank 0)."""

    def __init__(self, out: Path, worker: str, total_units: int, enabled: bool):
        self.out = out
        self.dir = out / "_progress"
        self.dir.mkdir(exist_ok=True)
        self.worker = worker
        self.rows = self.tokens = 0
        self.last = 0.0
        self.start = time.perf_counter()
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total_units, unit="unit", desc="scoring", dynamic_ncols=True, file=sys.stderr
            )
            self.bar.n = len(os.listdir(out / jobs.DONE))
            self.bar.refresh()

    def add(self, rows: int, tokens: int, force: bool = False) -> None:
        self.rows += rows
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last < 1.0 and not force:
            return
        self.last = now
        jobs.atomic_write_text(
            self.dir / f"{self.worker}.json", json.dumps({"rows": self.rows, "tokens": self.tokens})
        )
        if self.bar is not None:
            rows, tokens = 0, 0
            for other in self.dir.glob("*.json"):
                try:
                    counts = json.loads(other.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                rows += counts["rows"]
                tokens += counts["tokens"]
            elapsed = max(now - self.start, 1e-9)
            self.bar.n = min(len(os.listdir(self.out / jobs.DONE)), self.bar.total or 0)
            self.bar.set_postfix(articles=f"{rows:,}", articles_s=f"{rows / elapsed:,.1f}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.add(0, 0, force=True)
            self.bar.close()


def _part_counts(out: Path, name: str) -> dict[str, int]:
    """Counts of a part (and its errors file) already in place: a resumed stream's earlier parts."""
    part = out / f"part-{name}.parquet"
    scored = pq.ParquetFile(part).metadata.num_rows
    chunks = sum(pq.read_table(part, columns=["n_chunks"]).column(0).to_pylist()) if scored else 0
    err = out / f"errors-{name}.jsonl"
    errors = sum(1 for line in err.read_text().splitlines() if line.strip()) if err.exists() else 0
    return {"rows": scored + errors, "scored": scored, "errors": errors, "chunks": chunks, "tokens": 0}


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
    counts = {"rows": 0, "scored": 0, "errors": 0, "chunks": 0, "tokens": 0}
    here = dict(counts)  # what this call scored (a resumed stream's earlier parts are not)
    for name in parts:
        for key, value in _part_counts(out, name).items():
            counts[key] += value
    for name, rows in pieces:
        piece = _score_piece(scorer, unit, name, rows, opts, out, pool, progress, claim)
        for key, value in piece.items():
            counts[key] += value
            here[key] += value
        parts.append(name)
    if claim is not None and not claim.still_mine():
        raise LostClaim(unit.name)
    seconds = round(time.perf_counter() - started, 3)
    written = [f"part-{name}.parquet" for name in parts] + [
        f"errors-{name}.jsonl" for name in parts if (out / f"errors-{name}.jsonl").exists()
    ]
    record = {
        "parts": [f"part-{name}.parquet" for name in parts],
        "files": {f: jobs.file_record(out / f) for f in written},  # checked by the next run (verify)
        **counts,
        "worker": worker,
        "seconds": seconds,
    }
    jobs.mark_done(out, unit, record)
    return {**here, "seconds": seconds}


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
) -> dict[str, int]:
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
    return {
        "rows": scored_rows + len(errors),
        "scored": scored_rows,
        "errors": len(errors),
        "chunks": chunks,
        "tokens": tokens,
    }


def summarize(out: Path, job: dict[str, Any]) -> dict[str, int]:
    """Counts over every finished unit of the job (what the manifest reports)."""
    done = jobs.done_units(out)
    totals = {"rows": 0, "scored": 0, "errors": 0, "chunks": 0}
    for unit in job["units"]:
        record = done.get(f"{unit['file_index']:05d}-{unit['index']:05d}")
        if record is not None:
            for key in totals:
                totals[key] += record[key]
    return totals


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
    scorer measured 3 % fewer docs/s with one on the 2-core box, docs/BENCHMARKS.md "Data path")."""
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
) -> dict[str, Any]:
    return {
        "worker": worker,
        "rank": rank,
        "backend": backend,
        "device": device,
        "precision": precision,
        "units": 0,
        "rows": 0,
        "scored": 0,
        "errors": 0,
        "chunks": 0,
        "tokens": 0,
        "oom_splits": 0,
        "seconds": 0.0,
        "started_at": time.time(),
        "finished_at": None,
    }


def work(
    config: ScoreConfig, out: Path, job: dict[str, Any], record: dict[str, Any], show_progress: bool
) -> dict[str, Any]:
    """Claim and score units until none is left for this worker; returns its record (also written)."""
    opts = config.inference
    order = jobs.claim_order(jobs.units_of(job))
    start = time.perf_counter()
    scorer: Scorer | None = None
    pool: PrepPool | None = None
    progress = Progress(out, record["worker"], len(order), show_progress and opts.progress)
    try:
        while (claimed := jobs.claim_next(out, order, record["worker"], opts.claim_timeout_s)) is not None:
            unit, claim = claimed
            try:
                if scorer is None or pool is None:  # only a worker that has work loads the model
                    loading = time.perf_counter()
                    scorer = build_scorer(config, record["device"], record["precision"])
                    record["prep_workers"] = prep_workers(opts, record["device"])
                    pool = PrepPool(scorer.preparer, record["prep_workers"])
                    if opts.compile or record["device"].startswith("cuda"):
                        record["warmup_seconds"] = round(scorer.warmup(), 3)
                    # model load and warm-up are not scoring time (the manifest's wall time and rates)
                    start += time.perf_counter() - loading
                    record["started_at"] += time.perf_counter() - loading
                    record["load_seconds"] = round(time.perf_counter() - loading, 3)
                jobs.clean_unit_leftovers(out, unit)
                counts = score_unit(scorer, unit, opts, out, pool, progress, claim, record["worker"])
            except LostClaim:
                log.warning("unit %s was taken over by another worker; leaving it to them", unit.name)
                continue
            finally:
                claim.release()
            record["units"] += 1
            for key in ("rows", "scored", "errors", "chunks", "tokens"):
                record[key] += counts[key]
    finally:
        if pool is not None:
            pool.close()
    progress.close()
    record["oom_splits"] = scorer.oom_splits if scorer is not None else 0
    record["seconds"] = round(time.perf_counter() - start, 3)
    record["finished_at"] = time.time()
    jobs.write_worker(out, record)
    return record


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


def finish(config: ScoreConfig, out: Path, job: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """Write the manifest (every worker of this run, counts over every finished unit) and, when every
    unit is done, ``_SUCCESS``. Serialised between workers that end together; the last one's is whole."""
    with jobs.job_lock(out):
        done = jobs.done_units(out)
        units = jobs.units_of(job)
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
    job: dict[str, Any],
    files: list[str],
    totals: dict[str, int],
    n_done: int,
    complete: bool,
    workers: list[dict[str, Any]],
    elsewhere: int,
) -> dict[str, Any]:
    started = min((w["started_at"] for w in workers), default=None)
    ended = max((w["finished_at"] or w["started_at"] for w in workers), default=None)
    seconds = (ended - started) if started is not None and ended is not None else 0.0
    rows = sum(w["rows"] for w in workers)
    tokens = sum(w["tokens"] for w in workers)
    return {
        "complete": complete,
        "inputs": files,
        "output_dir": str(out.resolve()),
        "units": {
            "total": len(job["units"]),
            "done": n_done,
            "this_run": sum(w["units"] for w in workers),
            "in_progress_elsewhere": elsewhere,
        },
        **totals,
        "this_run": {
            "rows": rows,
            "errors": sum(w["errors"] for w in workers),
            "chunks": sum(w["chunks"] for w in workers),
            "tokens": tokens,
            "wall_seconds": round(seconds, 2),
            "articles_per_s": round(rows / seconds, 2) if seconds else None,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "processes": len(workers),
            "oom_splits": sum(w.get("oom_splits", 0) for w in workers),
            "workers": [
                {
                    k: w[k]
                    for k in ("worker", "rank", "backend", "device", "precision", "rows", "units", "seconds")
                }
                | {
                    k: w[k]
                    for k in ("oom_splits", "load_seconds", "warmup_seconds", "prep_workers")
                    if k in w
                }
                for w in workers
            ],
        },
        "planning_seconds": job.get("planning_seconds"),
        "precision": job["identity"]["options"]["precision"],
        "model": {
            "dir": str(Path(config.model_dir).resolve()),
            "name": packaged_name(config.model_dir),  # a packaged model's name (card ...), else null
            "hash": job["identity"]["model"],
            # the sources, splits and date ranges it learned from: `newsimpact signals` evaluates off them
            "training_data": json.loads((Path(config.model_dir) / META_FILE).read_text()).get(
                "training_data"
            ),
        },
        "config": asdict(config),
        "finished_at": _now(),
    }


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


@entry_point("score")
def main(cfg: DictConfig) -> None:
    config, files = load_validated(cfg, ScoreConfig, validate_score_config)
    try:
        exit_on_config_error(lambda: run(config, files))
    except RuntimeError as err:
        print(f"newsimpact: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
