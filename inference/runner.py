"""Model execution: an exported model loaded for scoring (PyTorch or onnxruntime) and one forward pass
per padded batch, launched without waiting for the previous one; the process set-up and the precision
rule a scoring process needs first. Never imports Lightning.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference import attention as cpu_attention
from inference.cpu_ops import keep_heap_memory, use_inplace_gelu
from training.modeling import HEADS_FILE, META_FILE, load_trained, read_meta
from training.records import HEAD_OUTPUTS, head_outputs

log = logging.getLogger("newsimpact.score")


def configure_process(
    device: str = "cpu", keep_heap: bool = True, arrow_pool: bool = True, threads: int | None = None
) -> None:
    """Process-wide settings for scoring, set once by the entry point (a Scorer changes none of them).

    On CPU: a single-threaded tokenizer (the background tokenizer thread shares the cores with the
    model's threads; a multi-threaded tokenizer stalls their parallel regions: docs/experiments/scoring.md),
    glibc keeping freed heap memory (``keep_heap``, inference/cpu_ops.py), and the bmm attention
    registered with transformers (inference/attention.py), which a Scorer then uses in bf16. Everywhere:
    Arrow allocating from the system heap (``arrow_pool``; one retained heap, not two: less peak memory at
    the same speed, docs/experiments/scoring.md). ``threads`` (a GPU worker's share of the host's
    cores): torch's threads and the tokenizer's batch-encoding threads, so several workers sharing one
    GPU do not oversubscribe the CPU.
    """
    import pyarrow as pa

    if threads is not None:
        torch.set_num_threads(threads)
        # the Rust tokenizer reads these once, at its first parallel call
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if threads > 1 else "false")

    if torch.device(device).type == "cpu":
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        if keep_heap:
            keep_heap_memory()  # before the model and the first batches allocate
        cpu_attention.register()
    if arrow_pool and keep_heap and "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on GPUs that support it and on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return "bf16" if native else "fp32"


def model_fingerprint(model_dir: str | Path) -> str:
    """Identity of an exported model: its metadata and heads, and the size of every weight file."""
    path = Path(model_dir)
    digest = hashlib.sha256()
    digest.update((path / META_FILE).read_bytes())
    if (path / HEADS_FILE).exists():
        digest.update((path / HEADS_FILE).read_bytes())
    for weights in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.onnx")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return digest.hexdigest()[:16]


class Runner:
    """One forward pass over a padded batch, with PyTorch or onnxruntime."""

    def __init__(
        self,
        model_dir: str,
        device: str,
        precision: str,
        compile: bool,
        use_onnx: bool,
        attention: str = "auto",
    ):
        self.device = torch.device(device)
        self.precision = precision
        self.session = None
        self.providers: list[Any] = []
        self.compiled = compile
        if use_onnx:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            self.providers = onnx_providers(self.device, ort.get_available_providers())
            self.session = ort.InferenceSession(
                str(Path(model_dir) / "model.onnx"), opts, providers=self.providers
            )
            self.n_labels = len(read_meta(model_dir)["schema"]["sentiment_labels"])
            return
        model = load_trained(model_dir)
        if hasattr(model.backbone, "merge_and_unload"):
            # An adapter export: merged once here (the same function, no LoRA matmuls per layer per batch).
            model.backbone = model.backbone.merge_and_unload()
        if precision != "fp32":
            # Half-precision backbone weights: under inference_mode autocast would re-cast every fp32
            # weight on every call. Heads stay fp32 (the model casts hidden states to their dtype).
            model.backbone.to(torch.bfloat16 if precision == "bf16" else torch.float16)
        self.model = model.to(self.device).eval()
        # bmm -> softmax -> bmm per sequence: faster than the fused SDPA kernel at short bf16 chunks on
        # CPUs (inference/attention.py; docs/experiments/scoring.md). It is registered
        # process-wide by configure_process(), which the entry points call.
        if attention == "bmm" and not cpu_attention.is_registered():
            raise ValueError(
                "attention='bmm' needs the CPU attention registered: call "
                "inference.runner.configure_process() once before building a Scorer"
            )
        wanted = attention == "bmm" or (
            attention == "auto"
            and self.device.type == "cpu"
            and precision == "bf16"
            and cpu_attention.is_registered()
        )
        if wanted and cpu_attention.use_cpu_attention(model.backbone):
            self.attention = "bmm"
        else:  # what the model runs: sdpa for most, eager for models with their own attention (MPNet)
            self.attention = str(getattr(model.backbone.config, "_attn_implementation", None) or "sdpa")
        if self.device.type == "cpu":
            use_inplace_gelu(model.backbone)  # exact; saves an allocation per layer (inference/cpu_ops.py)
        if compile:
            # Rows, length and ticker slots all vary from batch to batch: dynamic shapes from the start
            # (not a recompile per new shape, and no specialisation on 0/1 slots); Scorer.warmup() pays
            # the compilation before a job's timings start.
            self.model = torch.compile(self.model, dynamic=True)  # type: ignore[assignment]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def launch(
        self, ids: torch.Tensor, mask: torch.Tensor, entity_mask: torch.Tensor, embedding: bool = False
    ) -> Pending:
        """Start a batch: copy it to the device and queue the forward pass; the outputs are read by
        :meth:`Pending.result`. On a GPU this returns as soon as the work is queued, so the caller can
        build (and launch) the next batch while this one runs: every head's output (and the pooled
        states) is packed into one float32 matrix and copied back in one non-blocking copy into pinned
        memory, with an event to wait on (one sync per batch, not one per head)."""
        if self.session is not None:
            outputs = self.session.run(
                None,
                {
                    "input_ids": ids.numpy(),
                    "attention_mask": mask.numpy(),
                    "entity_mask": entity_mask.numpy(),
                },
            )
            return Pending(dict(zip(HEAD_OUTPUTS, outputs)))
        on_gpu = self.device.type == "cuda"
        ids = ids.to(self.device, non_blocking=on_gpu)
        mask = mask.to(self.device, non_blocking=on_gpu)
        entity_mask = entity_mask.to(self.device, non_blocking=on_gpu)
        with self._autocast():
            raw = self.model(ids, mask, entity_mask)
            out = head_outputs(raw)
        rows = ids.shape[0]
        parts = [out[name].reshape(rows, math.prod(out[name].shape[1:])) for name in HEAD_OUTPUTS]
        widths = [p.shape[1] for p in parts]
        if embedding:
            parts.append(raw["pooled"].float())
            widths.append(parts[-1].shape[1])
        packed = torch.cat(parts, dim=1)
        if not on_gpu:
            return Pending(_unpack(packed.numpy(), widths, embedding))
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return Pending(None, host, widths, embedding, done)

    def __call__(
        self, ids: torch.Tensor, mask: torch.Tensor, entity_mask: torch.Tensor, embedding: bool = False
    ) -> dict[str, np.ndarray]:
        """The heads' outputs (HEAD_OUTPUTS) for a batch, plus ``embedding`` (the pooled chunk states) if
        asked; an ONNX graph outputs the heads only."""
        return self.launch(ids, mask, entity_mask, embedding).result()


def _unpack(packed: np.ndarray, widths: list[int], embedding: bool) -> dict[str, np.ndarray]:
    names = [*HEAD_OUTPUTS, *(["embedding"] if embedding else [])]
    result: dict[str, np.ndarray] = {}
    start = 0
    for name, width in zip(names, widths):
        block = packed[:, start : start + width]
        # score and impact are one value per row; the others keep their columns (ticker slots may be 0)
        result[name] = block[:, 0] if name in ("sentiment_score", "impact") else block
        start += width
    return result


class Pending:
    """A launched batch: its outputs once the device is done (see :meth:`Runner.launch`)."""

    def __init__(
        self,
        ready: dict[str, np.ndarray] | None,
        host: torch.Tensor | None = None,
        widths: list[int] | None = None,
        embedding: bool = False,
        event: Any = None,
    ):
        self.ready, self.host, self.widths, self.embedding, self.event = ready, host, widths, embedding, event

    def result(self) -> dict[str, np.ndarray]:
        if self.ready is None:
            assert self.host is not None and self.widths is not None
            self.event.synchronize()
            self.ready = _unpack(self.host.numpy(), self.widths, self.embedding)
        return self.ready


def onnx_providers(device: torch.device, available: Sequence[str]) -> list[Any]:
    """onnxruntime providers for a device: CUDA first on a GPU when this onnxruntime has it (the
    onnxruntime-gpu package), else the CPU (logged: a GPU job would silently run on the CPU otherwise)."""
    if device.type == "cuda":
        if "CUDAExecutionProvider" in available:
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        log.warning(
            "inference device is %s but onnxruntime has no CUDAExecutionProvider (providers: %s): the ONNX "
            "model runs on the CPU; pip install onnxruntime-gpu, or score a merged export with PyTorch",
            device,
            ", ".join(available),
        )
    return ["CPUExecutionProvider"]
