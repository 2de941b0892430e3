"""The scorer's options (``inference.*``) and their validation: what a ``newsimpact score`` command may say.

``OutputOptions`` change the values written (with the model and the inputs they make a job's identity,
inference/manifest.py); ``RunOptions`` change only speed or policy, so a rerun may change them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.prep import PACKAGED_TICKER_MAPS
from inference.readers import expand_inputs
from training import model_meta
from training.choices import (
    Attention,
    Backend,
    ImpactAggregation,
    Precision,
    RayPrep,
    SentimentAggregation,
    Verify,
)
from training.config import ConfigError, register_schema
from training.modeling import META_FILE
from training.packaged_models import model_dir_problem, resolve_model_dir


@dataclass
class OutputOptions:
    """Options that change the values written: a job's identity is made of these and the model.

    A rerun into an existing output_dir must repeat them (or pass ``overwrite``)."""

    id_column: str = "id"
    text_column: str = "text"
    tickers_column: str = "tickers"  # used when an input row has it; else tickers are extracted
    keep_columns: list[str] = field(default_factory=list)
    unit_rows: int = 5000  # rows per work unit (approximate for byte ranges); fixes the job's plan
    precision: Precision = Precision.auto  # auto: bf16 on GPUs and CPUs with native bf16, else fp32
    max_chunks: int = 16
    stride: int | None = None  # tokens of overlap between chunks; null: the model folder's setting
    impact_aggregation: ImpactAggregation = ImpactAggregation.max
    # How the chunks of a long article combine into its sentiment and score: stance (length times the
    # chunk's non-neutral probability: boilerplate and balanced risk paragraphs count less), mean
    # (length-weighted: one polar sentence among neutral ones comes out neutral), first (the lede chunk).
    # The three compared on long documents: docs/experiments/news_card.md "Long articles".
    sentiment_aggregation: SentimentAggregation = SentimentAggregation.stance
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
    # Where windows are prepared (tokenized, chunked, tickers found): tasks is Ray's batch-inference split,
    # preparation on the cluster's CPUs as tasks and the model in the GPU actors (inference/ray_backend.py)
    prep: RayPrep = RayPrep.auto
    prep_tasks_in_flight: int = 8  # windows an actor keeps in preparation as tasks (prep=tasks)


@dataclass
class RunOptions:
    """Options that change only speed or policy: a rerun may change them freely."""

    backend: Backend = Backend.local  # local: this process (or torchrun ranks, or independent processes)
    window: int = 1024  # articles tokenized and length-sorted together
    batch_tokens: int | None = None  # padded tokens per forward pass; None: 4,096 on CPU, 16,384 on GPU
    max_batch_size: int = 256
    pad_to_multiple_of: int = 16  # batch lengths rounded up to this: few shapes keep CPU memory flat
    attention: Attention = Attention.auto  # auto: bmm on CPU in bf16, else SDPA
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
    verify: Verify = Verify.size
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
    if opts.ray.prep_tasks_in_flight < 1:
        problems.append("inference.ray.prep_tasks_in_flight must be >= 1")
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
    if opts.embeddings and meta_file.exists() and model_meta.read(config.model_dir).format == "onnx":
        problems.append(
            f"inference.embeddings=true: model_dir='{config.model_dir}' is an ONNX export, whose graph outputs "
            "the heads only; score with a merged or adapter export (export.format=merged)"
        )
    if problems:
        raise ConfigError(problems)
    return files
