"""Attention for short chunks on CPU: one batched matmul, a softmax and another batched matmul.

PyTorch's fused CPU attention kernel (what SDPA dispatches to) is tuned for long sequences; at the
scorer's chunk lengths (<= 512 tokens, 128 by default) the plain ``bmm -> softmax -> bmm`` is about 1.8x
faster in bf16 on the CPU box (docs/experiments/scoring.md). It is registered with transformers'
attention interface under :data:`NAME`, so any model using that interface (BERT, RoBERTa, DeBERTa-v2
style encoders, Llama-style decoders) can switch to it. Every case it does not cover -- causal
attention, grouped key/value heads, position biases, soft-capping, non-CPU tensors, dropout while
training, longer sequences -- falls through to transformers' own SDPA path, so switching is always safe.
Models that do not use the interface at all (MPNet computes its relative position bias inside its own
eager attention) refuse the switch and keep their own attention: :func:`use_cpu_attention` says so.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "newsimpact_cpu"
BLOCK_SCORES = 1 << 16  # score-matrix elements per block (512 KB in bf16)
MAX_LENGTH = 512  # beyond this the materialised score matrix costs more than the fused kernel saves


def bmm_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function: (batch, heads, length, dim) in, (batch, length, heads, dim) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (
        causal
        or query.device.type != "cpu"
        or key.shape[1] != query.shape[1]
        or max(query.shape[2], key.shape[2]) > MAX_LENGTH
        or (dropout > 0 and module.training)
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    scale = scaling if scaling is not None else dim**-0.5
    out = query.new_empty(batch, q_len, heads, dim)
    # A few sequences at a time: their score matrix stays in cache (and in reused heap memory).
    step = max(1, BLOCK_SCORES // (heads * q_len * kv_len))
    for start in range(0, batch, step):
        end = min(start + step, batch)
        n = end - start
        scores = torch.bmm(
            (query[start:end] * scale).reshape(n * heads, q_len, dim),
            key[start:end].reshape(n * heads, kv_len, dim).transpose(1, 2),
        ).view(n, heads, q_len, kv_len)
        if attention_mask is not None:
            mask = attention_mask[start:end] if attention_mask.shape[0] > 1 else attention_mask
            if mask.dtype == torch.bool:
                scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
            else:
                scores += mask.to(scores.dtype)
        probs = scores.softmax(-1).view(n * heads, q_len, kv_len)
        block = torch.bmm(probs, value[start:end].reshape(n * heads, kv_len, dim))
        out[start:end] = block.view(n, heads, q_len, dim).transpose(1, 2)
    return out, None


def register() -> str:
    """Make :data:`NAME` a valid ``attn_implementation`` (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, bmm_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # boolean masks; None when nothing is padded
    return NAME


def is_registered() -> bool:
    from transformers import AttentionInterface

    return NAME in AttentionInterface().valid_keys()


def use_cpu_attention(model: Any) -> bool:
    """Switch a loaded transformers model to :data:`NAME` (registered first with :func:`register`);
    False (model unchanged) where it cannot."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or not is_registered():
        return False
    try:
        setter(NAME)
    except (ValueError, ImportError, AttributeError, TypeError):
        return False
    # Models with their own attention code (MPNet's relative position bias, for one) only log a warning and
    # keep it: what counts is what the config now says.
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == NAME
