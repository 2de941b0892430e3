"""Typed configuration shared by every entry point.

Only entry points see Hydra: they hand the composed ``DictConfig`` to :func:`load_config`, which merges it
into the structured schema below (so an unknown key, a badly typed value or a value outside a choice,
training/choices.py, fails with its full key named); the entry point then runs its semantic checks
(training/config_checks.py for training). Everything after that works on plain dataclasses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from training import resolvers
from training.choices import (
    CheckpointMode,
    ClassWeights,
    DataFormat,
    Logger,
    PeftMethod,
    Pooling,
    Precision,
    SentimentLevel,
    TopicPooling,
    WeightDtype,
)
from training.errors import ConfigError  # noqa: F401  (re-exported: training.config.ConfigError)

DEFAULT_SENTIMENT_LABELS = ["strongly negative", "negative", "neutral", "positive", "strongly positive"]
DEFAULT_TOPICS = [
    "earnings", "guidance", "ai", "m&a", "analyst rating", "dividend", "ipo", "legal & regulation",
    "management change", "product", "macro", "central banks", "markets", "debt & rates", "energy",
    "commodities", "currencies", "politics", "financials", "stock movement", "stock commentary", "opinion",
]  # fmt: skip
HEADS = ("sentiment", "sentiment_score", "impact", "topics", "tickers")
CANONICAL_COLUMNS = (
    "text",
    "sentiment",
    "sentiment_score",
    "impact",
    "topics",
    "entities",
    "ticker",
    "ticker_score",
    "ticker_sentiment",
    "ticker_aliases",
)


# Every entry point's hydra.main(config_path=...): the configs/ folder, installed as the package
# newsimpact.configs (pyproject.toml), so an installed wheel finds them from any working directory.
CONFIGS = "pkg://newsimpact.configs"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

resolvers.register()


@dataclass
class SchemaConfig:
    sentiment_labels: list[str] = field(default_factory=lambda: list(DEFAULT_SENTIMENT_LABELS))
    topics: list[str] = field(default_factory=lambda: list(DEFAULT_TOPICS))
    # The three-class projection: coarse class -> its labels (contiguous runs of the scale). null: labels
    # below the middle, the middle, above, named by the label nearest the middle (negative, neutral,
    # positive). A source whose labels name coarse classes teaches only the class (training/scale.py).
    coarse_labels: dict[str, list[str]] | None = None
    # Score boundaries between adjacent labels; a label's scores lie in its band. null: [-0.1, 0.1] for three
    # labels, [-0.5, -0.1, 0.1, 0.5] for five (FinGPT's neutral -0.1 <= s < 0.1; "strongly" s < -0.5, s >= 0.5).
    score_cuts: list[float] | None = None


@dataclass
class ModelConfig:
    pretrained_model_name_or_path: str = "${minilm_path:}"
    max_length: int = 128
    # Replace every URL with this token before tokenizing (e.g. "http"); saved with the model, so
    # evaluation and scoring apply it too. null: text as is.
    replace_urls: str | None = None
    pooling: Pooling = Pooling.auto  # auto: mean for encoders, the last token for decoders
    # What the topic head reads: chunk (the pooled chunk state, like the other heads) or attention (each
    # topic pools the token states with its own attention weights, so a topic named in one sentence of a
    # chunk about something else still fires; training/modeling.py)
    topic_pooling: TopicPooling = TopicPooling.chunk
    head_dropout: float = 0.1
    # Dropout inside the backbone (hidden states and attention probabilities) while training. null: the
    # backbone's own rates (e.g. 0.1 for BERT models, as Hugging Face's Trainer trains them); a number sets
    # them all; 0: none (LoRA and head dropout still apply).
    backbone_dropout: float | None = None
    dtype: WeightDtype = WeightDtype.float32  # weights of the frozen backbone
    attn_implementation: str | None = None  # null: the library default (SDPA where supported)
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


@dataclass
class PeftConfig:
    method: PeftMethod = PeftMethod.lora  # none: full fine-tuning
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: Any = "all-linear"
    use_dora: bool = False
    bias: str = "none"
    # On CPU, draw LoRA dropout masks from 8-bit random numbers (p rounded to a multiple of 1/256): ~3x
    # cheaper than torch's dropout, which is over half of a CPU LoRA forward pass. GPUs use torch's.
    fast_dropout: bool = True
    # transformers.BitsAndBytesConfig kwargs (QLoRA), e.g. {load_in_4bit: true}; null for none.
    quantization: dict[str, Any] | None = None


@dataclass
class SplitConfig:
    path: str = "train.parquet"  # relative to the source root; a split name for format=hub
    where: dict[str, Any] = field(default_factory=dict)  # keep rows whose column equals the value


@dataclass
class EntityTableConfig:
    """A table of companies (one row per ticker with its names), e.g. SEntFiN's ``entities.parquet``.

    An entity whose string equals one of a row's names (case-insensitive) gets that row's ticker, and all
    of the row's names are used to find its mentions in the text.
    """

    path: str = ""  # relative to the source root (parquet, csv or jsonl)
    ticker: str = "symbol"  # column with the ticker
    aliases: str = "aliases"  # column with a list of names


@dataclass
class SourceConfig:
    root: str = ""
    format: DataFormat | None = None  # null: from the file extension
    splits: dict[str, SplitConfig] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=lambda: {"text": "text"})
    label_map: dict[str, str] = field(default_factory=dict)
    # What the sentiment labels mean on a scale finer than three classes. auto: coarse when every label of the
    # source names a coarse class (a three-class dataset: "positive" teaches positive-or-strongly-positive),
    # fine when it uses a label only the fine scale has (e.g. "strongly positive"); coarse | fine: say so.
    sentiment_level: SentimentLevel = SentimentLevel.auto
    # Take the sentiment label from the sentiment_score column by schema.score_cuts where a row has a score
    # (FiQA's continuous scores teach the five levels); rows without a score keep their label.
    sentiment_from_score: bool = False
    topic_map: dict[str, str] = field(default_factory=dict)
    # The topics this source labels (its other topics stay unlabelled: no loss, no metric). null: the topics
    # its topic_map maps onto, or every schema topic when it has no topic_map. A source of 20 topic classes
    # says nothing about a 21st, so its rows must not teach "not that topic".
    topic_scope: list[str] | None = None
    weight: float = 1.0
    max_samples: int | None = None
    # Text-only sources whose rows hold many short texts, one per line (a StockNet row is a day of a stock's
    # tweets): every non-empty line becomes a row of its own, exact repeats (and retweets of a kept text)
    # dropped, before max_samples. Unlabelled text for distillation; a labelled row's label would not
    # belong to each of its lines, so only columns {text: ...} is allowed.
    text_lines: bool = False
    # A return column whose |value| becomes impact in [0, 1] by its rank among this source's training rows.
    impact_from_return: str | None = None
    entity_table: EntityTableConfig | None = None
    # A column with each row's date (StockNet, FNSPID): the run records the dates its training and validation
    # rows span (newsimpact.json training_data), and `newsimpact signals` keeps its evaluation off them.
    date_column: str | None = None
    # Built from the public data on first use (training/derived.py), e.g. weak_topics; root is its cache
    # folder (${derived:NAME}) unless you point it at a copy of your own.
    derived: str | None = None
    # false: distill.teacher does not score this source's training rows (they learn from their own labels
    # only), e.g. a large source whose head no teacher knows (StockNet's impact in the card's recipe).
    distill: bool = True


@dataclass
class DataConfig:
    """A data config (configs/data/): its sources and how batches are cut from them.

    Shuffling, subsampling (``max_samples``) and source weights use the run's ``seed``."""

    # name -> SourceConfig. Typed here only after composition (__post_init__): OmegaConf cannot add a key to a
    # dict of structured values from the command line (+data.sources.extra.root=... would fail to merge).
    sources: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32  # training batch
    eval_batch_size: int = 128  # validation, test and training.evaluate
    group_by_length: bool = True  # training batches of similar length (less padding), still in random order
    # Batch lengths rounded up to a multiple: few distinct shapes, so the CPU backend's per-shape state
    # stays small (less memory, faster steps; docs/experiments/training.md) and GPU kernels get aligned sizes.
    pad_to_multiple_of: int = 8
    num_workers: int = 0

    def __post_init__(self) -> None:
        typed = {}
        for name, source in self.sources.items():
            if not isinstance(source, SourceConfig):
                try:
                    source = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SourceConfig), source))
                except OmegaConfBaseException as err:
                    detail = _describe_omegaconf_error(err).replace("'", f"'data.sources.{name}.", 1)
                    raise ConfigError([detail]) from None
            typed[name] = source
        self.sources = typed


@dataclass
class OptimConfig:
    lr: float = 5e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "linear"  # transformers.get_scheduler name: linear | cosine | constant_with_warmup
    warmup_ratio: float = 0.06
    foreach: bool = True  # multi-tensor AdamW (fewer kernel launches; false: the per-tensor loop)
    # Exponential moving average of the trainable weights (e.g. 0.99); validation, checkpoint selection
    # and export use the average, training continues from the raw weights. null: off.
    ema_decay: float | None = None


@dataclass
class LossConfig:
    sentiment: float = 1.0
    sentiment_score: float = 1.0
    impact: float = 1.0
    topics: float = 1.0
    tickers: float = 1.0
    # balanced: weight sentiment classes by inverse training frequency (helps macro-F1 on skewed sets);
    # sqrt_balanced: by its square root (a milder push towards the rare classes)
    sentiment_class_weights: ClassWeights | None = None
    # cross-entropy label smoothing of the sentiment head (0 = off)
    sentiment_label_smoothing: float = 0.0
    # R-Drop: every training batch runs twice (different dropout masks) and this weight times the symmetric
    # KL divergence between the two sentiment distributions joins the loss (0 = off; doubles step cost)
    sentiment_rdrop: float = 0.0
    # A coarse entity label on a finer scale (SEntFiN's "positive" on five levels): false measures the
    # ticker loss on the score axis (its span [0.5, 1]); true on the coarse classes' axis, where adjacent
    # classes are one step apart (distances count 1 / 0.5 = 2x, as on a three-label scale); mix_minilm
    # turns it on (docs/experiments/news_card.md)
    tickers_coarse_axis: bool = False


@dataclass
class TrainerConfig:
    # auto: the GPUs when the machine has them, else the CPU (trainer=cpu pins the CPU)
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: str = "32-true"
    max_epochs: int = 3
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    val_check_interval: Any = 1.0
    log_every_n_steps: int = 10
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    num_sanity_val_steps: int = 0
    deterministic: bool = False
    enable_progress_bar: bool = True
    max_time: str | None = None  # DD:HH:MM:SS; stops training (cleanly, with checkpoints) at that time


@dataclass
class CheckpointConfig:
    every_n_train_steps: int | None = 50
    monitor: str | None = None
    mode: CheckpointMode = CheckpointMode.max
    save_top_k: int = 1


@dataclass
class DistillConfig:
    """Knowledge distillation from an exported model (training/distill.py)."""

    # An exported model folder, or a list of them ([DIR_A,DIR_B]: teachers per task, each teaching the heads
    # it was trained on, a head several know their mean); a member may name its heads:
    # {model_dir: DIR, heads: [sentiment_score]}. null: no distillation. Read it with teacher_members().
    teacher: Any = None
    temperature: float = 2.0  # softens both sentiment distributions in the KL term (scaled by T^2)
    weight: float = 1.0  # weight of the teacher terms next to the hard-label loss
    # > 0: the student's pooled state, through a learned linear map to the teacher's width (training only,
    # not exported), is pulled towards the teacher's (cosine distance), with this weight. The teacher pass
    # then also writes its embeddings (inference.embeddings), in a cache folder of its own.
    hidden_weight: float = 0.0
    # Teacher heads to learn from; null: those the teacher was validated on (its newsimpact.json metrics).
    heads: list[str] | None = None
    # the batch scorer's precision for the teacher pass; auto: bf16 on a GPU (the pass runs on this rank's
    # GPU), fp32 on the CPU (the recipes in docs/experiments/training.md set bf16 on bf16 CPUs)
    precision: Precision = Precision.auto
    cache_dir: str | None = (
        None  # where the teacher's part files are kept; null: NEWSIMPACT_CACHE_DIR/distill
    )


@dataclass
class TrainConfig:
    name: str = "newsimpact"
    run_dir: str = "runs/${name}"
    resume: bool = False
    seed: int = 13
    schema: SchemaConfig = field(default_factory=SchemaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    loggers: list[Logger] = field(default_factory=lambda: [Logger.csv])


T = TypeVar("T")


def register_schema(name: str, node: type) -> None:
    """Store an entry point's typed config in Hydra's ConfigStore as ``name``.

    Its primary config lists it first (``defaults: [NAME, ...]``): every key exists with its dataclass
    default (so ``optim.lr=...`` overrides work and a typo in a config file fails at composition), and
    config files state only what differs from the defaults.
    """
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


register_schema("train_schema", TrainConfig)


def _describe_omegaconf_error(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, MissingMandatoryValue):
        return f"'{key}' is required; pass {key}=..."
    if isinstance(err, ConfigKeyError):
        owner = getattr(err, "object_type", None)
        known = ""
        if owner is not None and hasattr(owner, "__dataclass_fields__"):
            known = f" (known keys: {', '.join(owner.__dataclass_fields__)})"
        return f"unknown config key '{key}'{known}; fix the spelling or remove it"
    if isinstance(err, ValidationError):
        detail = str(getattr(err, "msg", err)).splitlines()[0]
        if "expected one of" in detail:  # a training.choices enum: the message lists the allowed values
            return f"bad value for '{key}': {detail}"
        return f"bad value for '{key}': {detail}; give a value of the expected type"
    return f"config problem at '{key}': {str(getattr(err, 'msg', err)).splitlines()[0]}"


def load_config(cfg: DictConfig | dict[str, Any], schema: type[T]) -> T:
    """Merge a composed config into the structured ``schema`` and return the typed object.

    Raises:
        ConfigError: an unknown key, a value of the wrong type or an unresolvable interpolation.
    """
    try:
        container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        merged = OmegaConf.merge(OmegaConf.structured(schema), container)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ConfigError):  # raised by a resolver (e.g. a missing extra): its own words
            raise ConfigError(cause.problems) from None
        raise ConfigError([_describe_omegaconf_error(err)]) from None


def source_split_files(source: SourceConfig, split: SplitConfig) -> list[str]:
    """Absolute file paths of one split of a local source (globs expanded)."""
    import glob

    pattern = split.path if os.path.isabs(split.path) else os.path.join(source.root, split.path)
    pattern = os.path.expanduser(pattern)
    return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]


DISTILL_HEADS = ("sentiment", "sentiment_score", "impact", "topics")


@dataclass(frozen=True)
class TeacherMember:
    """One member of ``distill.teacher``: an exported model and, where given, the heads it teaches."""

    model_dir: str
    heads: list[str] | None = None  # null: distill.heads, else those its export reports metrics for


def teacher_members(teacher: Any) -> list[TeacherMember]:
    """``distill.teacher`` as its members: none, one exported model, an ensemble ``[DIR_A,DIR_B]``, or
    members with their own heads, ``[DIR_A,{model_dir: DIR_B, heads: [sentiment_score]}]``. Packaged names
    resolve to their folders. The form is checked by training/config_checks.py first."""
    from training.packaged_models import resolve_model_dir

    if teacher is None:
        return []
    items = [teacher] if isinstance(teacher, str | os.PathLike) else list(teacher)
    members = []
    for item in items:
        if isinstance(item, str | os.PathLike):
            members.append(TeacherMember(resolve_model_dir(str(item))))
        else:
            heads = item.get("heads")
            members.append(
                TeacherMember(
                    resolve_model_dir(str(item["model_dir"])), None if heads is None else list(heads)
                )
            )
    return members


def teacher_dirs(teacher: Any) -> list[str]:
    """``distill.teacher``'s model folders, in order (see :func:`teacher_members`)."""
    return [m.model_dir for m in teacher_members(teacher)]


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` for our configs, with the command-line overrides checked first.

    The primary configs start from the typed schemas (:func:`register_schema`), so a typo or a badly typed
    override fails while Hydra composes, where Hydra reports it over several lines. The overrides are
    composed once beforehand with Hydra's compose API and a failure is reported as one line naming the key
    (exit code 2); Hydra's own flags (``--help``, ``--cfg``, ``-m`` sweeps ...) go straight to Hydra.
    """
    import functools

    import hydra

    def wrap(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        hydra_main = hydra.main(config_path=CONFIGS, config_name=config_name, version_base="1.3")(task)

        @functools.wraps(task)
        def main() -> Any:
            args = sys.argv[1:]
            if not any(a.startswith("-") for a in args):
                exit_on_config_error(lambda: check_overrides(config_name, args))
            return hydra_main()

        return main

    return wrap


def check_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose ``config_name`` with ``overrides``; raise :class:`ConfigError` (one line) if that fails."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    try:
        with initialize_config_module(CONFIGS.removeprefix("pkg://"), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, OmegaConfBaseException):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, OmegaConfBaseException):
            raise ConfigError([_describe_omegaconf_error(cause)]) from None
        raise ConfigError([str(err).splitlines()[0]]) from None


def load_validated(cfg: DictConfig, schema: type[T], validate: Callable[[T], Any]) -> tuple[T, Any]:
    """An entry point's first step: the typed config and what ``validate`` returns for it.

    Any config problem ends the process before work starts: one line per problem, exit code 2.
    """

    def _load() -> tuple[T, Any]:
        config = load_config(cfg, schema)
        return config, validate(config)

    return exit_on_config_error(_load)  # type: ignore[no-any-return]


def exit_on_config_error(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn a :class:`ConfigError` into one line per problem on stderr and exit code 2."""
    try:
        return fn()
    except ConfigError as err:
        for problem in err.problems:
            print(f"newsimpact: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
