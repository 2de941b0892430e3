"""The scored-record contract, defined once (docs/DESIGN.md section 6).

What the heads return at inference time (names, post-processing), which is what the ONNX graph outputs,
what evaluation compares with labels, and the columns and Arrow types of a scored record that the batch
scorer writes and signals and distillation read. ``training.export``, ``training.evaluate`` and
``inference`` all use these; no other module restates them. No Lightning import (inference uses it).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import torch

from training.scale import Scale

# Inference outputs of the heads, in the ONNX graph's output order.
HEAD_OUTPUTS = ("sentiment_probs", "sentiment_score", "impact", "topic_scores", "ticker_score")


def head_outputs(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's forward outputs as probabilities and scores: softmax over the sentiment classes,
    sigmoid per topic; score, impact and ticker scores are already tanh/sigmoid outputs of the model."""
    return {
        "sentiment_probs": torch.softmax(out["sentiment_logits"].float(), dim=-1),
        "sentiment_score": out["sentiment_score"].float(),
        "impact": out["impact"].float(),
        "topic_scores": torch.sigmoid(out["topic_logits"].float()),
        "ticker_score": out["ticker_score"].float(),
    }


TICKER_TYPE = pa.struct([("ticker", pa.string()), ("sentiment_score", pa.float32())])
TOPIC_TYPE = pa.struct([("topic", pa.string()), ("score", pa.float32())])
# One scored article: these columns, then the input columns passed through (inference.keep_columns).
RECORD_FIELDS = (
    pa.field("id", pa.string()),
    pa.field("sentiment", pa.string()),
    pa.field("sentiment_coarse", pa.string()),  # the label's coarse class: the three-class projection
    pa.field("sentiment_probs", pa.list_(pa.float32())),
    pa.field("sentiment_score", pa.float32()),
    pa.field("impact", pa.float32()),
    pa.field("topics", pa.list_(pa.string())),
    pa.field("topic_scores", pa.list_(TOPIC_TYPE)),
    pa.field("tickers", pa.list_(TICKER_TYPE)),
    pa.field("n_chunks", pa.int32()),
)
RECORD_KEYS = tuple(f.name for f in RECORD_FIELDS)
# With inference.embeddings=true, after n_chunks: the article's pooled backbone state (its chunks' states
# averaged with the sentiment weights), the vector the heads read.
EMBEDDING_FIELD = pa.field("embedding", pa.list_(pa.float32()))


def untrained(counts: dict[str, Any] | None, scale: Scale | None = None) -> dict[str, list[str]]:
    """Sentiment classes, topics and heads no training row taught (empty lists for an old model without
    counts). A coarse class taught only by coarse rows (three-class sources on a five-level scale, no
    intensity source) teaches its label of the same name: on such a model "strongly positive" is untrained
    and "positive" is not."""
    if not counts:
        return {"sentiment": [], "topics": [], "heads": []}
    fine = counts["sentiment"]
    missing = [k for k, n in fine.items() if n == 0]
    if scale is not None:
        for name, rows in (counts.get("sentiment_coarse") or {}).items():
            members = [scale.labels[i] for i in scale.members[scale.coarse.index(name)]]
            if rows and not any(fine.get(label) for label in members):
                taught = name if name in members else members[len(members) // 2]
                missing = [k for k in missing if k != taught]
    return {
        "sentiment": missing,
        "topics": [k for k, v in counts["topics"].items() if v["positive"] == 0],
        "heads": [k for k, n in (counts.get("heads") or {}).items() if n == 0],
    }


def record_schema(keep: list[pa.Field] | tuple[pa.Field, ...] = (), embedding: bool = False) -> pa.Schema:
    """Arrow schema of a part file: the record, its embedding if asked, then the kept input columns."""
    return pa.schema([*RECORD_FIELDS, *([EMBEDDING_FIELD] if embedding else []), *keep])
