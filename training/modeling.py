"""Backbone + LoRA + heads (the loss: training/losses.py). No Lightning here: scoring reuses this file.

One forward pass of a chunk yields every head: sentiment classes, a sentiment score (tanh), an impact
(sigmoid), topic logits (multi-label) and one score per ticker. A ticker's score comes from pooling the
token states of its mentions (``entity_mask``) next to the pooled chunk state, so all tickers of a chunk
share the pass and scoring cost does not grow with their number.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training import model_meta
from training.config import ModelConfig, PeftConfig

HEADS_FILE = "heads.safetensors"
META_FILE = model_meta.META_FILE
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LabelSchema:
    """What the heads mean; saved with every artifact so downstream steps never ask again."""

    sentiment_labels: list[str]
    topics: list[str]
    # the three-class projection and the labels' score bands (training/scale.py); null in files written
    # before they existed: the defaults
    coarse_labels: dict[str, list[str]] | None = None
    score_cuts: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_encoder(config: Any) -> bool:
    """True for masked-LM style encoders (BERT/RoBERTa/DeBERTa), False for decoder LMs (Llama/Qwen/...)."""
    from transformers import MODEL_FOR_MASKED_LM_MAPPING

    return type(config) in MODEL_FOR_MASKED_LM_MAPPING and not getattr(config, "is_decoder", False)


def resolve_pooling(pooling: str, backbone_config: Any) -> str:
    if pooling != "auto":
        return pooling
    return "mean" if is_encoder(backbone_config) else "last"


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states [B, T, H] into one vector per sequence [B, H]."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    # "last": the last attended position, whichever side the tokenizer pads on.
    positions = torch.arange(attention_mask.shape[1], device=hidden.device)
    last = (attention_mask * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class NewsImpactModel(nn.Module):
    """A Hugging Face backbone (optionally peft-wrapped) with the newsimpact heads."""

    backbone: Any  # a transformers PreTrainedModel, or a peft PeftModel around one

    def __init__(
        self,
        backbone: Any,
        schema: LabelSchema,
        pooling: str = "mean",
        head_dropout: float = 0.1,
        topic_pooling: str = "chunk",
    ):
        super().__init__()
        hidden: int = backbone.config.hidden_size
        self.backbone = backbone
        self.schema = schema
        self.pooling = pooling
        self.topic_pooling = topic_pooling
        self.dropout = nn.Dropout(head_dropout)
        self.heads = nn.ModuleDict(
            {
                "sentiment": nn.Linear(hidden, len(schema.sentiment_labels)),
                "sentiment_score": nn.Linear(hidden, 1),
                "impact": nn.Linear(hidden, 1),
                "topics": nn.Linear(hidden, max(1, len(schema.topics))),
                "tickers": nn.Linear(2 * hidden, 1),
            }
        )
        if topic_pooling == "attention":
            # Label-wise attention: one query per topic over the chunk's token states. Zero-initialised,
            # so training starts from mean pooling.
            attention = nn.Linear(hidden, max(1, len(schema.topics)))
            nn.init.zeros_(attention.weight)
            nn.init.zeros_(attention.bias)
            self.heads["topic_attention"] = attention

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        entity_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.to(self.heads["sentiment"].weight.dtype)
        state = pool(hidden, attention_mask, self.pooling)
        pooled = self.dropout(state)
        out = {
            "pooled": state,  # the chunk state the heads read (before dropout): embeddings, distillation
            "sentiment_logits": self.heads["sentiment"](pooled),
            "sentiment_score": torch.tanh(self.heads["sentiment_score"](pooled).squeeze(-1)),
            "impact_logits": self.heads["impact"](pooled).squeeze(-1),
            "topic_logits": self.heads["topics"](pooled)[:, : len(self.schema.topics)]
            if self.topic_pooling == "chunk"
            else self._topic_attention(hidden, attention_mask),
        }
        out["impact"] = torch.sigmoid(out["impact_logits"])
        n_entities = 0 if entity_mask is None else entity_mask.shape[1]
        if n_entities == 0:
            # Run the ticker head on one empty slot and slice it away: its parameters stay in the autograd
            # graph (zero gradient), which DDP requires of every parameter in every step.
            entity_mask = torch.zeros(
                input_ids.shape[0], 1, input_ids.shape[1], dtype=torch.bool, device=hidden.device
            )
        assert entity_mask is not None
        weights = entity_mask.to(hidden.dtype)  # [B, E, T]
        mentions = torch.bmm(weights, hidden) / weights.sum(-1, keepdim=True).clamp(min=1.0)  # [B, E, H]
        context = pooled.unsqueeze(1).expand(-1, mentions.shape[1], -1)
        ticker_in = self.dropout(torch.cat([mentions, context], dim=-1))
        out["ticker_score"] = torch.tanh(self.heads["tickers"](ticker_in).squeeze(-1))[
            :, :n_entities
        ]  # [B, E]
        return out

    def _topic_attention(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Topic logits [B, K], each from the token states pooled by that topic's attention (padding
        excluded): a chunk whose second sentence reports results reads "earnings" off that sentence rather
        than off the average of the whole chunk."""
        scores = self.heads["topic_attention"](hidden).float()  # [B, T, K]
        scores = scores.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1).to(hidden.dtype)
        per_topic = self.dropout(torch.einsum("btk,bth->bkh", weights, hidden))  # [B, K, H]
        head: nn.Linear = self.heads["topics"]  # type: ignore[assignment]
        logits = (per_topic * head.weight.unsqueeze(0)).sum(-1) + head.bias
        return logits[:, : len(self.schema.topics)]


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Decoder LMs ship without a pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(model_cfg: ModelConfig, peft_cfg: PeftConfig | None = None) -> Any:
    """The plain Hugging Face backbone (``AutoModel``), quantized when the peft config asks for QLoRA."""
    from transformers import AutoModel

    kwargs: dict[str, Any] = {
        "dtype": _DTYPES[model_cfg.dtype],
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if peft_cfg is not None and peft_cfg.quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(**peft_cfg.quantization)
        # each DDP rank's 4-bit backbone on its own GPU (without a map every rank loads onto cuda:0)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    backbone = detach_pooler(AutoModel.from_pretrained(model_cfg.pretrained_model_name_or_path, **kwargs))
    if model_cfg.gradient_checkpointing:
        backbone.gradient_checkpointing_enable()
    return backbone


_POOLER = "_newsimpact_pooler"


def detach_pooler(backbone: Any) -> Any:
    """Take a BERT-style pooler out of the backbone; returns the backbone.

    We pool the hidden states ourselves, so the pooler never runs: left in, its weights would train with
    no gradient (DDP refuses parameters outside the graph, and LoRA ``all-linear`` would adapt it). It is
    kept beside the backbone (an attribute, not a submodule: no parameters, no state dict) so that
    :func:`pooler_attached` can put it back when a folder is saved for ``AutoModel``, without loading the
    base model a second time. Every loading path goes through here.
    """
    pooler = getattr(backbone, "pooler", None)
    if pooler is not None:
        backbone.pooler = None
        object.__setattr__(backbone, _POOLER, pooler)
    return backbone


@contextlib.contextmanager
def pooler_attached(backbone: Any) -> Iterator[Any]:
    """The backbone with its detached pooler back in place (for ``save_pretrained``), detached again after."""
    pooler = backbone.__dict__.get(_POOLER)
    if pooler is not None:
        like = next(backbone.parameters())
        backbone.pooler = pooler.to(device=like.device, dtype=like.dtype)
    try:
        yield backbone
    finally:
        if pooler is not None:
            backbone.pooler = None


def apply_peft(backbone: Any, peft_cfg: PeftConfig) -> Any:
    """Wrap the backbone with a peft LoRA/DoRA adapter, or leave it fully trainable (method=none)."""
    if peft_cfg.method == "none":
        return backbone
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if peft_cfg.quantization:
        backbone = prepare_model_for_kbit_training(backbone)
    target = peft_cfg.target_modules
    lora = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=peft_cfg.r,
        lora_alpha=peft_cfg.lora_alpha,
        lora_dropout=peft_cfg.lora_dropout,
        target_modules=target if isinstance(target, str) else list(target),
        use_dora=peft_cfg.use_dora,
        bias=peft_cfg.bias,  # type: ignore[arg-type]
    )
    model = get_peft_model(backbone, lora)
    if peft_cfg.fast_dropout:
        use_byte_dropout(model)
    return model


class ByteDropout(nn.Module):
    """Inverted dropout whose CPU mask comes from one random byte per element.

    torch's CPU dropout draws one random number per element, and with LoRA on every linear layer that is
    over half of a training forward pass (docs/experiments/training.md). Here one 32-bit draw serves four elements;
    the price is ``p`` rounded to a multiple of 1/256 (0.05 -> 13/256, 0.1 -> 26/256). Off CPU it is
    plain ``F.dropout``.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)
        self.scale = 1.0 / (1.0 - self.threshold / 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int32).random_(-(2**31), 2**31)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p} (as {self.threshold}/256)"


def use_byte_dropout(model: nn.Module) -> int:
    """Swap peft's LoRA dropout modules for :class:`ByteDropout`; returns how many."""
    count = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, layer in dropouts.items():
                if isinstance(layer, nn.Dropout):
                    dropouts[name] = ByteDropout(layer.p)
                    count += 1
    return count


def build_model(model_cfg: ModelConfig, peft_cfg: PeftConfig, schema: LabelSchema) -> NewsImpactModel:
    """Backbone from ``model_cfg``, adapter from ``peft_cfg``, fresh heads for ``schema``."""
    backbone = load_backbone(model_cfg, peft_cfg)
    pooling = resolve_pooling(model_cfg.pooling, backbone.config)
    backbone = apply_peft(backbone, peft_cfg)
    if model_cfg.backbone_dropout is not None:
        set_backbone_dropout(backbone, model_cfg.backbone_dropout)
    return NewsImpactModel(
        backbone,
        schema,
        pooling=pooling,
        head_dropout=model_cfg.head_dropout,
        topic_pooling=model_cfg.topic_pooling,
    )


def set_backbone_dropout(backbone: nn.Module, p: float) -> int:
    """Set every dropout of the pretrained network (not LoRA's own) to ``p``; returns how many.

    Attention-probability dropout is included: the SDPA attention of transformers' models reads its rate
    from the attention module's ``nn.Dropout``.
    """
    count = 0
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Dropout) and "lora_dropout" not in name:
            module.p = p
            count += 1
    return count


def trainable_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Only the parameters that train (adapter + heads): what checkpoints need to store."""
    return {prefix + name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: NewsImpactModel, out_dir: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Write the adapter (or full backbone for method=none), the heads and ``newsimpact.json``."""
    from safetensors.torch import save_file

    from training.artifacts import atomic_dir

    with atomic_dir(out_dir, replace=True) as out:  # whole or not at all
        if hasattr(model.backbone, "peft_config"):
            model.backbone.save_pretrained(out / "backbone")  # the adapter only
        else:  # method=none: the whole backbone, loadable with AutoModel (pooler included)
            with pooler_attached(model.backbone) as backbone:
                backbone.save_pretrained(out / "backbone")
        heads = {k: v.detach().float().contiguous().cpu() for k, v in model.heads.state_dict().items()}
        save_file(heads, str(out / HEADS_FILE))
        model_meta.write(out, meta)


def read_meta(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``newsimpact.json`` of a run's ``adapter/`` folder or an exported model folder, as a dict with the
    defaults of older files filled in (:mod:`training.model_meta`, the one reader)."""
    return model_meta.read(model_dir).to_dict()


def _load_heads(model: NewsImpactModel, folder: Path) -> None:
    from safetensors.torch import load_file

    model.heads.load_state_dict(load_file(str(folder / HEADS_FILE)))


def load_trained(folder: str | os.PathLike[str], dtype: str | None = None) -> NewsImpactModel:
    """Rebuild a model from a run's ``adapter/`` folder or an exported ``merged``/``adapter`` folder.

    Everything needed (base model, schema, pooling, format) is read from ``newsimpact.json``.
    """
    from transformers import AutoModel

    path = Path(folder)
    meta = model_meta.read(path)
    schema = LabelSchema(**meta.schema)
    torch_dtype = _DTYPES[dtype or meta.dtype]
    if meta.format in ("merged", "onnx"):
        backbone = AutoModel.from_pretrained(path, dtype=torch_dtype)
    else:
        weights = path / "backbone" if meta.format == "run" else path
        if (weights / "adapter_config.json").exists():
            from peft import PeftModel

            from training.packaged_models import resolve_base_model

            base_model = resolve_base_model(meta.base_model)  # newsimpact:minilm -> its local folder
            base = detach_pooler(AutoModel.from_pretrained(base_model, dtype=torch_dtype))
            backbone = PeftModel.from_pretrained(base, weights)
        else:  # peft.method=none: the run saved the whole fine-tuned backbone
            backbone = AutoModel.from_pretrained(weights, dtype=torch_dtype)
    detach_pooler(backbone)
    model = NewsImpactModel(
        backbone,
        schema,
        pooling=meta.pooling,
        head_dropout=0.0,
        topic_pooling=meta.topic_pooling,
    )
    _load_heads(model, path)
    return model.eval()
