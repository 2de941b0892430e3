"""The semantic checks of a training config: what types and choices cannot say (files that must exist,
labels that must map onto the schema, trainer and peft combinations this machine cannot run, a monitor
that validation logs, a teacher that fits). Every problem is collected, then one ConfigError is raised:
the run stops before any work with one line per problem (training.config.exit_on_config_error).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from training.config import (
    CANONICAL_COLUMNS,
    DISTILL_HEADS,
    HEADS,
    ConfigError,
    SchemaConfig,
    SourceConfig,
    TrainConfig,
    source_split_files,
    teacher_members,
)


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path)


def _coarse_names(schema: SchemaConfig) -> list[str]:
    from training.scale import Scale

    try:
        return Scale.of(schema).coarse
    except ValueError:  # reported by validate_train_config
        return []


def check_source(name: str, source: SourceConfig, schema: SchemaConfig, problems: list[str]) -> None:
    key = f"data.sources.{name}"
    if "text" not in source.columns:
        problems.append(f"{key}.columns has no 'text' entry; name the column that holds the article text")
    for canon in source.columns:
        if canon not in CANONICAL_COLUMNS:
            problems.append(
                f"{key}.columns.{canon} is not a canonical field; use one of {', '.join(CANONICAL_COLUMNS)}"
            )
    coarse = _coarse_names(schema)
    for src_label, label in source.label_map.items():
        if label not in schema.sentiment_labels and label not in coarse:
            problems.append(
                f"{key}.label_map.{src_label}='{label}' is not on schema.sentiment_labels {schema.sentiment_labels} "
                f"nor a coarse class {coarse}"
            )
    if source.sentiment_from_score and "sentiment_score" not in source.columns:
        problems.append(
            f"{key}.sentiment_from_score needs a score: map one with {key}.columns.sentiment_score"
        )
    for src_topic, topic in source.topic_map.items():
        if topic not in schema.topics:
            problems.append(f"{key}.topic_map.{src_topic}='{topic}' is not in schema.topics")
    for topic in source.topic_scope or []:
        if topic not in schema.topics:
            problems.append(f"{key}.topic_scope: '{topic}' is not in schema.topics")
    if source.weight <= 0:
        problems.append(f"{key}.weight={source.weight} must be > 0")
    if source.text_lines and (set(source.columns) != {"text"} or source.impact_from_return):
        problems.append(
            f"{key}.text_lines=true splits each row into its lines, whose labels are unknown: map only "
            f"the text ({key}.columns={{text: ...}}, no impact_from_return) or drop text_lines"
        )
    if not source.splits:
        problems.append(f"{key}.splits is empty; give at least a train split")
    if source.format == "hub":
        return
    if source.derived and not os.path.isdir(os.path.expanduser(source.root)):
        from training.derived import missing_inputs

        problems.extend(f"{key}: {line}" for line in missing_inputs(source.derived))
        return  # built when the source loads
    if not source.root or not os.path.isdir(os.path.expanduser(source.root)):
        problems.append(
            f"{key}.root='{source.root}' is not a folder; point it at your copy "
            f"({key}.root=/path/to/data) or set NEWSIMPACT_DATA_DIR"
        )
        return
    table = source.entity_table
    if table is not None:
        path = os.path.join(source.root, table.path)
        if not table.path or not os.path.isfile(path):
            problems.append(f"{key}.entity_table.path: no file at {path}; fix the path or drop entity_table")
    for split_name, split in source.splits.items():
        files = source_split_files(source, split)
        missing = [f for f in files if not os.path.exists(f)]
        if not files or missing:
            problems.append(f"{key}.splits.{split_name}.path: no file at {missing or split.path}")


def trainer_problems(config: TrainConfig) -> list[str]:
    """Trainer and peft combinations that would fail at the first step or quietly run elsewhere."""
    import torch

    problems: list[str] = []
    trainer = config.trainer
    strategy = str(trainer.strategy)
    on_gpu = trainer.accelerator in ("gpu", "cuda") or (
        trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    if strategy.startswith("fsdp") and not on_gpu:
        problems.append(
            f"trainer.strategy={strategy} needs CUDA GPUs (Lightning's FSDP runs on accelerator=gpu only); "
            "on CPUs use trainer=ddp trainer.accelerator=cpu"
        )
    if strategy.startswith("deepspeed") and not on_gpu:
        problems.append(
            f"trainer.strategy={strategy} needs CUDA GPUs; on CPUs use trainer=ddp trainer.accelerator=cpu"
        )
    if trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        problems.append(
            f"trainer.accelerator={trainer.accelerator} but this machine has no CUDA GPU; "
            "use trainer=cpu (or trainer.accelerator=auto)"
        )
    if config.peft.quantization and not on_gpu:
        problems.append(
            "peft=qlora (peft.quantization) needs a CUDA GPU (bitsandbytes 4-bit); on CPUs use peft=lora"
        )
    if strategy.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            problems.append(
                f"trainer.strategy={strategy} needs DeepSpeed: pip install 'newsimpact[deepspeed]'"
            )
    return problems


def validate_train_config(config: TrainConfig) -> None:
    """Semantic checks that the type system cannot express. Collects every problem, raises once."""
    problems: list[str] = []
    schema = config.schema
    if len(schema.sentiment_labels) < 2 or len(set(schema.sentiment_labels)) != len(schema.sentiment_labels):
        problems.append("schema.sentiment_labels needs at least two distinct labels")
    if len(set(schema.topics)) != len(schema.topics):
        problems.append("schema.topics has duplicates")
    if len(schema.sentiment_labels) >= 2:
        from training.scale import scale_problems

        problems.extend(scale_problems(schema.sentiment_labels, schema.coarse_labels, schema.score_cuts))
    model = config.model
    if _looks_local(model.pretrained_model_name_or_path) and not os.path.isdir(
        os.path.expanduser(model.pretrained_model_name_or_path)
    ):
        problems.append(
            f"model.pretrained_model_name_or_path='{model.pretrained_model_name_or_path}' is not a folder; "
            "give a local Hugging Face model folder or a hub id"
        )
    if model.max_length < 8:
        problems.append(f"model.max_length={model.max_length} is too small (>= 8)")
    peft = config.peft
    if peft.method == "lora" and peft.r <= 0:
        problems.append(f"peft.r={peft.r} must be a positive integer")
    if not 0.0 <= peft.lora_dropout < 1.0:
        problems.append(f"peft.lora_dropout={peft.lora_dropout} must be in [0, 1)")
    if not config.data.sources:
        problems.append("data.sources is empty; pick a data config (data=sample) or add a source")
    for name, source in config.data.sources.items():
        check_source(name, source, schema, problems)
    if not any("train" in s.splits for s in config.data.sources.values()) and config.data.sources:
        problems.append("no data source has a 'train' split")
    if config.data.batch_size < 1:
        problems.append(f"data.batch_size={config.data.batch_size} must be >= 1")
    if config.optim.ema_decay is not None and not 0.0 < config.optim.ema_decay < 1.0:
        problems.append(f"optim.ema_decay={config.optim.ema_decay} must be in (0, 1) or null")
    if not 0.0 <= config.loss.sentiment_label_smoothing < 1.0:
        problems.append(
            f"loss.sentiment_label_smoothing={config.loss.sentiment_label_smoothing} must be in [0, 1)"
        )
    if config.model.backbone_dropout is not None and not 0.0 <= config.model.backbone_dropout < 1.0:
        problems.append(f"model.backbone_dropout={config.model.backbone_dropout} must be in [0, 1) or null")
    if config.loss.sentiment_rdrop < 0:
        problems.append(f"loss.sentiment_rdrop={config.loss.sentiment_rdrop} must be >= 0")
    for head in HEADS:
        if getattr(config.loss, head) < 0:
            problems.append(f"loss.{head} must be >= 0")
    if config.optim.lr <= 0 or config.optim.head_lr <= 0:
        problems.append("optim.lr and optim.head_lr must be > 0")
    if not 0.0 <= config.optim.warmup_ratio < 1.0:
        problems.append(f"optim.warmup_ratio={config.optim.warmup_ratio} must be in [0, 1)")
    if config.trainer.max_steps <= 0 and config.trainer.max_epochs <= 0:
        problems.append("set trainer.max_steps or trainer.max_epochs to a positive number")
    problems.extend(trainer_problems(config))
    if config.resume and not (Path(config.run_dir) / "checkpoints" / "last.ckpt").exists():
        problems.append(
            f"resume=true but {config.run_dir}/checkpoints/last.ckpt does not exist; "
            "drop resume=true or point run_dir at the run to continue"
        )
    _check_monitor(config, problems)
    _check_distill(config, problems)
    if problems:
        raise ConfigError(problems)


def monitor_keys(schema: SchemaConfig) -> list[str]:
    """Every metric a run can select its checkpoint on (``val/`` + training.metrics.HeadMetrics' names): the
    three-class ``sentiment_coarse_*`` only on a scale finer than its projection, topics only with topics."""
    from training.scale import Scale

    keys = ["loss", "sentiment_acc", "sentiment_f1_macro"]
    try:
        if Scale.of(schema).refines:
            keys += ["sentiment_coarse_acc", "sentiment_coarse_f1_macro"]
    except ValueError:  # reported by validate_train_config
        pass
    keys += [f"{head}_{m}" for head in ("sentiment_score", "impact", "tickers") for m in ("mae", "spearman")]
    if schema.topics:
        keys += ["topics_f1_micro", "topics_f1_macro"]
    return [f"val/{k}" for k in keys]


def _check_monitor(config: TrainConfig, problems: list[str]) -> None:
    """A monitor no validation logs would stop the run at its first validation, after the work."""
    ckpt = config.checkpoint
    if ckpt.monitor is None:
        return
    keys = monitor_keys(config.schema)
    if ckpt.monitor not in keys:
        problems.append(
            f"checkpoint.monitor='{ckpt.monitor}' is never logged with this schema; one of: {', '.join(keys)}"
        )


def _member_problem(item: Any) -> str | None:
    """What is wrong with one mapping member of distill.teacher ({model_dir: DIR, heads: [...]}), if anything."""
    if not (OmegaConf.is_dict(item) or isinstance(item, dict)):
        return f"'{item}' is neither a folder nor {{model_dir: DIR, heads: [...]}}"
    unknown = sorted(set(item) - {"model_dir", "heads"})
    if unknown:
        return f"unknown key(s) {unknown} in a member (model_dir, heads)"
    if not isinstance(item.get("model_dir"), str):
        return "a member without model_dir"
    heads = item.get("heads")
    if heads is not None and not (OmegaConf.is_list(heads) or isinstance(heads, list)):
        return f"a member's heads={heads} is not a list"
    return None


def _check_distill(config: TrainConfig, problems: list[str]) -> None:
    from training import model_meta
    from training.distill import teacher_heads

    distill = config.distill
    teacher = distill.teacher
    if teacher is None:
        return
    listed = OmegaConf.is_list(teacher) or isinstance(teacher, list | tuple)
    items = [teacher] if isinstance(teacher, str) else list(teacher) if listed else None
    if items is None or not all(isinstance(t, str) or _member_problem(t) is None for t in items):
        bad = next((_member_problem(t) for t in items or [] if not isinstance(t, str)), None)
        problems.append(
            f"distill.teacher={teacher}: {bad or 'not a model'}; give an exported model folder, or a list "
            "for teachers per task: distill.teacher=[DIR_A,{model_dir: DIR_B, heads: [sentiment_score]}]"
        )
        return
    members = teacher_members(items)  # a packaged model's name (card) is a teacher too
    if not members:
        problems.append("distill.teacher=[]: name at least one exported model, or distill.teacher=null")
        return
    key = "distill.teacher" if len(members) == 1 else "distill.teacher[{}]"
    for i, member in enumerate(members):
        name, folder = key.format(i), member.model_dir
        for head in member.heads or []:
            if head not in DISTILL_HEADS:
                problems.append(f"{name}.heads: '{head}' is not one of {', '.join(DISTILL_HEADS)}")
        if not (Path(folder) / "newsimpact.json").is_file():
            problems.append(
                f"{name}='{folder}' is not an exported model (no newsimpact.json); "
                "export the teacher with `python -m training.export run_dir=RUN output_dir=DIR`"
            )
            continue
        meta = model_meta.read(folder)
        if distill.hidden_weight > 0 and meta.format == "onnx":
            problems.append(
                f"distill.hidden_weight={distill.hidden_weight}: the teacher '{folder}' is an ONNX "
                "export, whose graph has no pooled state; use a merged or adapter export of it, or "
                "distill.hidden_weight=0"
            )
        labels = meta.sentiment_labels
        heads = teacher_heads(meta.to_dict(), member.heads if member.heads is not None else distill.heads)
        teaches_sentiment = "sentiment" in heads or not heads  # heads unknown: it may teach sentiment
        allowed = (list(config.schema.sentiment_labels), _coarse_names(config.schema))
        if teaches_sentiment and labels not in allowed:
            problems.append(
                f"{name}'s sentiment labels {labels} are neither schema.sentiment_labels "
                f"{allowed[0]} nor their coarse classes {allowed[1]}; set schema.sentiment_labels={labels}, "
                "or leave sentiment out of what it teaches: distill.heads=[...]"
            )
    if distill.temperature <= 0:
        problems.append(f"distill.temperature={distill.temperature} must be > 0")
    if distill.weight < 0:
        problems.append(f"distill.weight={distill.weight} must be >= 0")
    if distill.hidden_weight < 0:
        problems.append(f"distill.hidden_weight={distill.hidden_weight} must be >= 0")
    for head in distill.heads or []:
        if head not in DISTILL_HEADS:
            problems.append(f"distill.heads: '{head}' is not one of {', '.join(DISTILL_HEADS)}")
