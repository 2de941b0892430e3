"""``newsimpact.json``, the model folder's contract (docs/DESIGN.md section 5), as one typed record.

Every reader goes through :func:`read`, which fills the defaults of files written by older versions in one
place; every writer through :func:`write`. Keys this version does not know are kept (``extra``) and
written back, so a newer file passes through an older tool unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META_FILE = "newsimpact.json"
FORMAT_VERSION = 2
FORMATS = ("run", "merged", "adapter", "onnx")  # run: a training run's adapter/ folder


def default_stride(max_length: int) -> int:
    """Tokens of overlap between the chunks of a long article, unless a folder says otherwise."""
    return max(16, max_length // 8)


@dataclass
class ModelMeta:
    base_model: str  # a path, a hub id, or a packaged backbone (newsimpact:minilm)
    schema: dict[str, Any]  # sentiment_labels, topics, coarse_labels, score_cuts
    max_length: int
    pooling: str = "mean"
    format_version: int = 1
    format: str = "run"
    dtype: str = "float32"
    replace_urls: str | None = None
    topic_pooling: str = "chunk"  # files written before label-wise attention existed: chunk
    head_dropout: float = 0.0
    peft: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    impact_calibration: dict[str, Any] = field(default_factory=dict)
    label_counts: dict[str, Any] | None = None  # None: an export from before counts (emits everything)
    training_data: dict[str, Any] | None = None  # None: not recorded (signals cannot check its days)
    metrics: dict[str, Any] = field(default_factory=dict)
    chunking: dict[str, Any] | None = None
    exported_from: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    packaged: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sentiment_labels(self) -> list[str]:
        return list(self.schema["sentiment_labels"])

    @property
    def topics(self) -> list[str]:
        return list(self.schema.get("topics", []))

    @property
    def stride(self) -> int:
        """The chunk overlap the folder was made with (exports write it), else the default rule."""
        chunking = self.chunking or {}
        return int(chunking.get("stride", default_stride(self.max_length)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}  # null: the default
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **out}


def read(model_dir: str | os.PathLike[str]) -> ModelMeta:
    """The ``newsimpact.json`` of a model folder or a run's ``adapter/`` folder, defaults filled in."""
    path = Path(model_dir) / META_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: model_dir must be a folder written by `newsimpact export` (or a run's "
            "adapter/ folder, or a packaged model's name)"
        )
    return ModelMeta.from_dict(json.loads(path.read_text()))


def write(model_dir: str | os.PathLike[str], meta: ModelMeta | dict[str, Any]) -> None:
    record = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
    (Path(model_dir) / META_FILE).write_text(json.dumps(record.to_dict(), indent=2, sort_keys=True))
