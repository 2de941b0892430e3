"""Every string-valued option with a fixed set of values, in one place.

A config field typed with one of these enums is checked by OmegaConf where the configs merge (a config
file, a command-line override, ``load_config``): ``model.pooling=meen`` stops before any work with
``bad value for 'model.pooling': Invalid value 'meen', expected one of [auto, mean, cls, last]``. The
allowed values live here and nowhere else: validation, ``--help`` texts and docs read them from the enum.

Members are ``str`` (``Pooling.mean == "mean"``, ``f"{Pooling.mean}" == "mean"``, JSON writes ``"mean"``), so
code compares them with plain strings and records written before the enums existed read the same. A
member's name is its value: OmegaConf matches a config's string against the names.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A string option with a fixed set of values (members compare, format and serialise as their value)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Precision(Choice):
    """Numeric precision of a scoring or evaluation pass (auto: bf16 where the device computes it natively)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class WeightDtype(Choice):
    """Dtype of the frozen backbone's weights while training."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class ExportDtype(Choice):
    """Dtype of exported weights (an ONNX graph is always fp32)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class ExportFormat(Choice):
    merged = "merged"  # backbone with the adapter folded in, plus heads: plain transformers + safetensors
    adapter = "adapter"  # the adapter and heads only (MBs); the backbone is named in newsimpact.json
    onnx = "onnx"  # one graph for onnxruntime


class Quantize(Choice):
    int8 = "int8"  # a dynamically quantized copy of the ONNX graph


class Pooling(Choice):
    """How a chunk's token states become one vector (auto: mean for encoders, the last token for decoders)."""

    auto = "auto"
    mean = "mean"
    cls = "cls"
    last = "last"


class TopicPooling(Choice):
    """What the topic head reads: the pooled chunk, or per-topic attention over the tokens."""

    chunk = "chunk"
    attention = "attention"


class PeftMethod(Choice):
    lora = "lora"
    none = "none"  # full fine-tuning


class DataFormat(Choice):
    json = "json"
    csv = "csv"
    parquet = "parquet"
    hub = "hub"  # a Hugging Face hub dataset; splits name its splits


class SentimentLevel(Choice):
    """What a source's sentiment labels mean on a scale finer than three classes (training/scale.py)."""

    auto = "auto"
    coarse = "coarse"
    fine = "fine"


class ClassWeights(Choice):
    balanced = "balanced"  # inverse training frequency
    sqrt_balanced = "sqrt_balanced"  # its square root


class CheckpointMode(Choice):
    max = "max"
    min = "min"


class Logger(Choice):
    csv = "csv"
    tensorboard = "tensorboard"
    mlflow = "mlflow"


class Backend(Choice):
    local = "local"  # this process, torchrun ranks, or independent processes on one output folder
    ray = "ray"


class Verify(Choice):
    """What a scoring rerun checks of the units already done."""

    size = "size"  # each part's byte size (cheap)
    full = "full"  # and its SHA-256


class Attention(Choice):
    auto = "auto"  # bmm on CPU in bf16, else SDPA
    sdpa = "sdpa"
    bmm = "bmm"


class ImpactAggregation(Choice):
    max = "max"
    mean = "mean"


class SentimentAggregation(Choice):
    """How the chunks of a long article combine into its sentiment and score."""

    stance = "stance"  # length times the chunk's non-neutral probability
    mean = "mean"  # length-weighted
    first = "first"  # the lede chunk


class DateOnlySession(Choice):
    """The session a date-only timestamp belongs to."""

    same = "same"
    next = "next"


class TrainingDays(Choice):
    """What ``signals`` does with evaluation days the model trained or selected on."""

    exclude = "exclude"
    flag = "flag"
    refuse = "refuse"


class EventGroups(Choice):
    terciles = "terciles"
    sign = "sign"


class ScoreSign(Choice):
    signed = "signed"  # impact labels also get a signed score (the sign of the abnormal return)


class RayPrep(Choice):
    """Where a Ray scorer actor's windows are prepared."""

    auto = "auto"  # tasks for GPU actors, the actor itself (inference.prep_workers) on CPU actors
    tasks = "tasks"  # Ray tasks of one CPU each, anywhere in the cluster: a CPU map stage feeding the model
    actor = "actor"  # in the actor: a background thread or its own prep processes (inference.prep_workers)
