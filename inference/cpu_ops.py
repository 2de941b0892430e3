"""Exact CPU inference shortcuts for transformers encoders (used by the scorer, never in training).

The GELU between an encoder layer's two feed-forward matmuls is applied in place: the activation
tensor is the largest one of the layer (tokens x 4 hidden), and allocating a fresh one per layer costs
more than the GELU itself on the CPU box (page faults on new heap memory: 186 vs 201 ms per 32 x 128
batch of MiniLM in bf16, bit-identical outputs; docs/experiments/scoring.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class InplaceGELU(nn.Module):
    """Exact (erf) GELU that overwrites its input when no autograd graph is being recorded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
            return torch.ops.aten.gelu_(x)
        return nn.functional.gelu(x)


def use_inplace_gelu(model: nn.Module) -> int:
    """Swap the exact GELU of every ``*Intermediate`` block (BERT, RoBERTa, DeBERTa, ELECTRA ...) for
    :class:`InplaceGELU`; returns how many were swapped. Only blocks that return ``act(dense(x))`` and
    nothing else qualify, so the overwritten tensor is never read again."""
    from transformers.activations import GELUActivation

    swapped = 0
    for module in model.modules():
        act: Any = getattr(module, "intermediate_act_fn", None)
        if (
            type(act) is GELUActivation
            and act.act is nn.functional.gelu
            and isinstance(getattr(module, "dense", None), nn.Linear)
            and type(module).__name__.endswith("Intermediate")
        ):
            module.intermediate_act_fn = InplaceGELU()
            swapped += 1
    return swapped


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 2**31 - 1  # (mallopt takes an int) in effect: keep freed heap memory


def keep_heap_memory() -> bool:
    """Serve large tensors from the heap and keep freed heap memory, instead of glibc's default of
    mapping and unmapping them (every new activation tensor then costs page faults). The process keeps
    its peak heap, which a scorer reaches in its first windows and then reuses: whole-process docs/s
    +12-14 % on the CPU box at the same peak RSS (docs/experiments/scoring.md).

    Only on glibc, and not where the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    themselves. Returns whether both settings were applied."""
    import ctypes
    import os
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(None)
        mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):
        return False
    return bool(mmap_ok and trim_ok)
