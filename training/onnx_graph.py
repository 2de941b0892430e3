"""The ONNX graph of a model: every head's inference-time output for ``input_ids``, ``attention_mask`` and
``entity_mask``, with dynamic batch, sequence and entity axes. Written by ``export.format=onnx`` and by the
news card's cache (inference/card.py); run by onnxruntime (inference/runner.py). No Lightning here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.modeling import NewsImpactModel
from training.records import HEAD_OUTPUTS, head_outputs


class OnnxHeads(torch.nn.Module):
    """Inference-time outputs of every head, as the ONNX graph returns them."""

    def __init__(self, model: NewsImpactModel):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, entity_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = head_outputs(self.model(input_ids, attention_mask, entity_mask))
        return tuple(out[name] for name in HEAD_OUTPUTS)


def export_onnx(model: NewsImpactModel, tokenizer: Any, path: Path, opset: int) -> None:
    sample = tokenizer(["$ACME beats estimates", "quiet day"], padding=True, return_tensors="pt")
    entity_mask = torch.zeros(2, 1, sample["input_ids"].shape[1], dtype=torch.bool)
    entity_mask[0, 0, 1] = True
    torch.onnx.export(
        OnnxHeads(model).eval(),
        (sample["input_ids"], sample["attention_mask"], entity_mask),
        str(path),
        input_names=["input_ids", "attention_mask", "entity_mask"],
        output_names=list(HEAD_OUTPUTS),
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "entity_mask": {0: "batch", 1: "entities", 2: "sequence"},
            "sentiment_probs": {0: "batch"},
            "sentiment_score": {0: "batch"},
            "impact": {0: "batch"},
            "topic_scores": {0: "batch"},
            "ticker_score": {0: "batch", 1: "entities"},
        },
        opset_version=opset,
        dynamo=False,
    )
