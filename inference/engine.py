"""Model execution for scoring: chunking, token-budget batches, one forward pass per chunk, aggregation.

Loads any exported model folder (merged, adapter: PyTorch; onnx: onnxruntime). Never imports Lightning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from inference import attention as cpu_attention
from inference.cpu_ops import keep_heap_memory, use_inplace_gelu
from training import model_meta
from training.modeling import HEADS_FILE, META_FILE, load_tokenizer, load_trained, read_meta
from training.records import HEAD_OUTPUTS, head_outputs, untrained
from training.scale import Scale
from training.text import normalize
from training.tickers import NameMatcher, extract_tickers, find_mentions, spans_to_tokens

log = logging.getLogger("newsimpact.score")

# A long article is cut to this many characters per allowed chunk before tokenizing, so one giant row
# costs bounded time (generous: English averages ~4-5 characters per token).
CHARS_PER_TOKEN_CAP = 12


@dataclass
class Article:
    id: str
    text: str
    tickers: list[str] | None = None  # from the input column; None: extract from the text
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    article: int  # index into the window's articles
    input_ids: np.ndarray  # int32; arrays, not lists: a window holds thousands of chunks
    entity_tokens: list[list[int]]  # per ticker of the article (empty list: not mentioned here)


class Prepared(NamedTuple):
    """A window of articles ready for the model: its chunks, each article's tickers, its token count."""

    chunks: list[Chunk]
    tickers: list[list[str]]
    tokens: int

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent back from a prep process packed: every chunk's ids in one array, not thousands of small
        # arrays each pickled on its own (that took 60 % as long as preparing the window).
        lengths = np.fromiter((len(c.input_ids) for c in self.chunks), dtype=np.int64, count=len(self.chunks))
        flat = np.concatenate([c.input_ids for c in self.chunks]) if self.chunks else np.zeros(0, np.int32)
        owners = [c.article for c in self.chunks]
        mentions = [c.entity_tokens for c in self.chunks]
        return (_unpack_prepared, (flat, lengths, owners, mentions, self.tickers, self.tokens))


def _unpack_prepared(
    flat: np.ndarray,
    lengths: np.ndarray,
    owners: list[int],
    mentions: list[list[list[int]]],
    tickers: list[list[str]],
    tokens: int,
) -> Prepared:
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    chunks = [Chunk(a, flat[s:e], m) for a, s, e, m in zip(owners, starts, ends, mentions)]
    return Prepared(chunks, tickers, tokens)


class Preparer:
    """Everything before the model: text -> token chunks with ticker-mention positions.

    Holds only the tokenizer and text options (picklable), so a pool of prep worker processes can run it
    (inference/prep.py) while the device computes."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int,
        stride: int,
        max_chunks: int,
        replace_urls: str | None = None,
        ticker_map: Mapping[str, str] | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.stride = stride
        self.max_chunks = max_chunks
        self.replace_urls = replace_urls
        # A fast tokenizer's Rust core, called directly: the chunks transformers' batch call would return
        # (the same truncation, stride and special tokens), without building its Python dicts of every
        # field (~25 % of the call on the CPU box; docs/BENCHMARKS.md "Data path"). Our own copy, so
        # setting its truncation changes nothing for other users of the tokenizer.
        self.backend = None
        if getattr(tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.enable_truncation(
                max_length, stride=stride, strategy="longest_first", direction=tokenizer.truncation_side
            )
            backend.no_padding()
            self.backend = backend
        self.names = NameMatcher(
            dict(ticker_map or {})
        )  # one pass over each text's words, whatever the map size
        self.aliases: dict[str, list[str]] = {}
        for name, ticker in (ticker_map or {}).items():
            self.aliases.setdefault(ticker, []).append(name)

    def __call__(self, articles: Sequence[tuple[str, list[str] | None]]) -> Prepared:
        """(text, given tickers or None) pairs -> chunks (at most ``max_chunks`` per article), tickers
        (given, else extracted: cashtags, exchange notations, names of the ticker map), tokens."""
        cap = self.max_chunks * self.max_length * CHARS_PER_TOKEN_CAP
        texts = [normalize(text[:cap], self.replace_urls) for text, _ in articles]
        owners, ids_of, offsets_of = self._encode(texts)
        tickers = [
            given if given is not None else extract_tickers(text, self.names)
            for (_, given), text in zip(articles, texts)
        ]
        spans = [
            [find_mentions(text, t, self.aliases.get(t, ())) for t in ticks]
            for text, ticks in zip(texts, tickers)
        ]
        chunks: list[Chunk] = []
        per_article: dict[int, int] = {}
        tokens = 0
        for c, art in enumerate(owners):
            if per_article.get(art, 0) >= self.max_chunks:
                continue
            per_article[art] = per_article.get(art, 0) + 1
            entity_tokens: list[list[int]] = [[] for _ in spans[art]]
            if any(spans[art]):  # only where a ticker is named, only the spans inside this chunk's text
                offsets = offsets_of(c)
                real = [o for o in (*offsets[:2], *offsets[-2:]) if o[1] > o[0]]  # specials: (0, 0)
                lo, hi = (min(o[0] for o in real), max(o[1] for o in real)) if real else (0, 0)
                array = None
                for t, ticker_spans in enumerate(spans[art]):
                    inside = [sp for sp in ticker_spans if sp[0] < hi and sp[1] > lo]
                    if inside:
                        array = np.asarray(offsets, dtype=np.int64) if array is None else array
                        entity_tokens[t] = spans_to_tokens(array, inside)
            ids = np.asarray(ids_of(c), dtype=np.int32)
            chunks.append(Chunk(art, ids, entity_tokens))
            tokens += len(ids)
        return Prepared(chunks, tickers, tokens)

    def _encode(self, texts: list[str]) -> tuple[list[int], Any, Any]:
        """Every chunk's article index, and functions from a chunk's index to its ids and its offsets."""
        if self.backend is not None:
            chunks, owners = [], []
            for art, encoding in enumerate(self.backend.encode_batch(texts, add_special_tokens=True)):
                for piece in (encoding, *encoding.overflowing):  # transformers' order of overflowing chunks
                    chunks.append(piece)
                    owners.append(art)
            return owners, lambda c: chunks[c].ids, lambda c: chunks[c].offsets
        enc = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        return (
            list(enc["overflow_to_sample_mapping"]),
            lambda c: enc["input_ids"][c],
            lambda c: enc["offset_mapping"][c],
        )


def configure_process(
    device: str = "cpu", keep_heap: bool = True, arrow_pool: bool = True, threads: int | None = None
) -> None:
    """Process-wide settings for scoring, set once by the entry point (a Scorer changes none of them).

    On CPU: a single-threaded tokenizer (the background tokenizer thread shares the cores with the
    model's threads; a multi-threaded tokenizer stalls their parallel regions: +4.5 % docs/s on the CPU
    box), glibc keeping freed heap memory (``keep_heap``, inference/cpu_ops.py), and the bmm attention
    registered with transformers (inference/attention.py), which a Scorer then uses in bf16. Everywhere:
    Arrow allocating from the system heap (``arrow_pool``; one retained heap, not two: -70 MB peak RSS
    at 6,000 documents on the CPU box, same speed). ``threads`` (a GPU worker's share of the host's
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
        # bmm -> softmax -> bmm per sequence: ~7 % faster than the fused SDPA kernel at 128-token bf16
        # chunks on the CPU box (inference/attention.py; the same within 3e-7 in fp32). It is registered
        # process-wide by configure_process(), which the entry points call.
        if attention == "bmm" and not cpu_attention.is_registered():
            raise ValueError(
                "attention='bmm' needs the CPU attention registered: call "
                "inference.engine.configure_process() once before building a Scorer"
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


class Scorer:
    """Turns a window of articles into scored records.

    Changes no process-wide state: call :func:`configure_process` once first (the entry points do).
    ``precision`` is fp32, bf16 or fp16 (resolve ``auto`` with :func:`resolve_precision`).
    """

    def __init__(
        self,
        model_dir: str,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,
        batch_tokens: int | None = None,
        max_batch_size: int = 256,
        pad_to_multiple_of: int = 16,
        attention: str = "auto",
        max_chunks: int = 16,
        stride: int | None = None,
        impact_aggregation: str = "max",
        sentiment_aggregation: str = "stance",
        topic_threshold: float = 0.5,
        ticker_map: Mapping[str, str] | None = None,
        embeddings: bool = False,
    ):
        self.meta = read_meta(model_dir)
        self.labels: list[str] = self.meta["schema"]["sentiment_labels"]
        self.topics: list[str] = self.meta["schema"]["topics"]
        # Classes and topics no training row taught (newsimpact.json label_counts) are never emitted as
        # predictions: an untrained class gets probability 0 (the others renormalised), an untrained topic
        # is left out of topics and topic_scores. Models exported without counts emit everything.
        self.scale = Scale.of(self.meta["schema"])
        missing = untrained(self.meta.get("label_counts"), self.scale)
        self.class_mask = np.array([label not in missing["sentiment"] for label in self.labels])
        self.taught_topics = [i for i, t in enumerate(self.topics) if t not in missing["topics"]]
        # Heads no row taught: the score comes from the class probabilities (Scale.expected_score), impact
        # and ticker scores are null.
        self.untrained_heads = set(missing["heads"])
        self.max_length: int = self.meta["max_length"]
        self.replace_urls: str | None = self.meta.get("replace_urls")
        # the folder's own chunk overlap (exports write it), else the one default rule (training/model_meta.py)
        self.stride = stride if stride is not None else model_meta.ModelMeta.from_dict(self.meta).stride
        self.tokenizer = load_tokenizer(model_dir)
        use_onnx = self.meta.get("format") == "onnx"
        if embeddings and use_onnx:
            raise ValueError(
                f"inference.embeddings=true: {model_dir} is an ONNX export, whose graph outputs the heads "
                "only; score with a merged or adapter export of the model (export.format=merged)"
            )
        self.embeddings = embeddings  # records get the article's pooled state as "embedding"
        self.runner = Runner(model_dir, device, precision, compile, use_onnx, attention)
        self.oom_splits = 0  # batches split in half after running out of device memory
        on_gpu = torch.device(device).type == "cuda"
        self.pin = on_gpu
        # Token budget per forward pass. On CPU 4,096 keeps a batch's activations cache- and heap-friendly
        # (faster than 16,384 on the CPU box, docs/BENCHMARKS.md); a GPU wants big batches.
        self.batch_tokens = batch_tokens or (16384 if on_gpu else 4096)
        self.max_batch_size = max_batch_size
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        self.max_chunks = max_chunks
        self.impact_aggregation = impact_aggregation
        self.sentiment_aggregation = sentiment_aggregation
        self.topic_threshold = topic_threshold
        self.ticker_map = dict(ticker_map or {})
        self.preparer = Preparer(
            self.tokenizer, self.max_length, self.stride, max_chunks, self.replace_urls, self.ticker_map
        )

    # -- preparation (a background thread or prep worker processes: inference/prep.py) ----------------
    def prepare(self, articles: Sequence[Article]) -> Prepared:
        """Tokenize articles into chunks with ticker mention positions (:class:`Preparer`)."""
        return self.preparer([(a.text, a.tickers) for a in articles])

    def padded_length(self, n: int) -> int:
        """Batch length for a longest chunk of n tokens: rounded up to ``pad_to_multiple_of``.

        Few distinct shapes matter on CPU: the backend keeps state per input shape (measured: forward
        passes of arbitrary shapes grow the allocated memory with every new shape, bucketed ones do
        not; docs/BENCHMARKS.md), so exact-length batches grow memory with the corpus.
        """
        m = self.pad_to_multiple_of
        return max(n, min(-(-n // m) * m, self.max_length))

    def full_batch(self, length: int) -> int:
        """Rows in a full batch of that padded length."""
        return max(1, min(self.max_batch_size, self.batch_tokens // length))

    def batches(self, chunks: list[Chunk]) -> Iterator[list[int]]:
        """Chunk indices packed into batches under the token budget, longest first."""
        order = sorted(range(len(chunks)), key=lambda i: len(chunks[i].input_ids), reverse=True)
        batch: list[int] = []
        length = 0
        for i in order:
            if not batch:
                length = self.padded_length(len(chunks[i].input_ids))
            elif len(batch) >= self.full_batch(length):
                yield batch
                batch, length = [], self.padded_length(len(chunks[i].input_ids))
            batch.append(i)
        if batch:
            yield batch

    def _tensors(
        self, chunks: list[Chunk]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
        """A batch as padded tensors (pinned on a GPU): ids, attention mask, ticker-mention mask, and per
        row the article-ticker index of each mention slot. Built with array indexing, not a row loop."""
        length = self.padded_length(max(len(c.input_ids) for c in chunks))
        # A short last batch is topped up to a power of two rows (copies of its first row, whose outputs
        # are ignored) so that the set of batch shapes stays small; see padded_length.
        rows = min(1 << (len(chunks) - 1).bit_length(), max(self.full_batch(length), len(chunks)))
        chunks = list(chunks) + [chunks[0]] * (rows - len(chunks))
        pad = self.tokenizer.pad_token_id
        left = self.tokenizer.padding_side == "left"
        lengths = np.fromiter((len(c.input_ids) for c in chunks), dtype=np.int64, count=rows)
        flat = np.concatenate([c.input_ids for c in chunks])
        row_of = np.repeat(np.arange(rows), lengths)
        # each token's column: its position in its chunk, shifted right by the padding when it is on the left
        firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        col = np.arange(flat.size) - firsts + (np.repeat(length - lengths, lengths) if left else 0)
        # Only tickers mentioned in a chunk get a slot in it: slot lists map slots back to tickers.
        slots = [
            [t for t, toks in enumerate(c.entity_tokens) if toks] if c.entity_tokens else [] for c in chunks
        ]
        n_slots = max((len(s) for s in slots), default=0)
        n_slots = 1 << (n_slots - 1).bit_length() if n_slots else 0  # a power of two: few shapes again
        ids = torch.full((rows, length), pad, dtype=torch.long, pin_memory=self.pin)
        mask = torch.zeros((rows, length), dtype=torch.long, pin_memory=self.pin)
        entity_mask = torch.zeros((rows, n_slots, length), dtype=torch.bool, pin_memory=self.pin)
        ids.numpy()[row_of, col] = flat
        mask.numpy()[row_of, col] = 1
        if n_slots:
            b_idx: list[int] = []
            e_idx: list[int] = []
            t_idx: list[int] = []
            for b, row_slots in enumerate(slots):
                shift = int(length - lengths[b]) if left else 0
                for e, t in enumerate(row_slots):
                    toks = chunks[b].entity_tokens[t]
                    b_idx += [b] * len(toks)
                    e_idx += [e] * len(toks)
                    t_idx += [shift + k for k in toks]
            entity_mask.numpy()[b_idx, e_idx, t_idx] = True
        return ids, mask, entity_mask, slots

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, articles: Sequence[Article], prepared: Prepared | None = None) -> list[dict[str, Any]]:
        """Score a window of articles; one output record per article, in input order."""
        chunks, tickers, _ = prepared if prepared is not None else self.prepare(articles)
        return self._aggregate(articles, chunks, tickers, *self.chunk_outputs(chunks))

    def _launch(
        self, chunks: list[Chunk], batch: list[int]
    ) -> list[tuple[list[int], list[list[int]], Pending]]:
        """Launch a batch; one that runs out of device memory is split in half and each half launched
        (down to one chunk, which then fails for real), counted in ``oom_splits`` and logged."""
        ids, mask, entity_mask, slots = self._tensors([chunks[i] for i in batch])
        try:
            return [(batch, slots, self.runner.launch(ids, mask, entity_mask, self.embeddings))]
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            del ids, mask, entity_mask
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.oom_splits += 1
            half = len(batch) // 2
            log.warning(
                "out of device memory on a batch of %d chunks x %d tokens: retrying as %d + %d chunks "
                "(lower inference.batch_tokens to avoid the retries)",
                len(batch),
                max(len(chunks[i].input_ids) for i in batch),
                half,
                len(batch) - half,
            )
            return self._launch(chunks, batch[:half]) + self._launch(chunks, batch[half:])

    def chunk_outputs(self, chunks: list[Chunk]) -> tuple[Any, ...]:
        """Every chunk's head outputs: probabilities, score, impact, topic scores, ticker scores, and its
        pooled state (None unless the scorer was built with ``embeddings``).

        Batch n+1 is built and launched before batch n's outputs are read, so on a GPU the host builds
        the next batch while the device computes (one wait per batch, for its one packed copy)."""
        n_labels, n_topics = len(self.labels), len(self.topics)
        probs = np.zeros((len(chunks), n_labels), dtype=np.float64)
        score = np.zeros(len(chunks))
        impact = np.zeros(len(chunks))
        topic = np.zeros((len(chunks), n_topics))
        ticker_scores: list[dict[int, tuple[float, int]]] = [{} for _ in chunks]
        states: np.ndarray | None = None

        def store(batch: list[int], slots: list[list[int]], pending: Pending) -> None:
            nonlocal states
            out = pending.result()
            n = len(batch)
            if self.embeddings:
                if states is None:
                    states = np.zeros((len(chunks), out["embedding"].shape[-1]), dtype=np.float32)
                states[batch] = out["embedding"][:n]
            probs[batch] = out["sentiment_probs"][:n]
            score[batch] = out["sentiment_score"][:n]
            impact[batch] = out["impact"][:n]
            topic[batch] = out["topic_scores"][:n, :n_topics]
            for row in range(n):  # only rows with a mentioned ticker have slots
                if slots[row]:
                    i = batch[row]
                    for e, t in enumerate(slots[row]):
                        ticker_scores[i][t] = (
                            float(out["ticker_score"][row, e]),
                            len(chunks[i].entity_tokens[t]),
                        )

        in_flight: list[tuple[list[int], list[list[int]], Pending]] = []
        for batch in self.batches(chunks):
            launched = self._launch(chunks, batch)
            for item in in_flight:
                store(*item)
            in_flight = launched
        for item in in_flight:
            store(*item)
        return probs, score, impact, topic, ticker_scores, states

    def warmup(self) -> float:
        """Run a few dummy batches of different shapes (compilation with ``compile``, CUDA kernels and
        allocator pools) so that a job's timings start warm; returns the seconds it took."""
        started = time.perf_counter()
        ids = np.asarray(self.tokenizer("warm up")["input_ids"], dtype=np.int32)
        for length, rows in ((16, 1), (32, 3), (self.max_length, 2)):
            reps = max(1, length // max(1, len(ids)))
            chunk_ids = np.resize(np.tile(ids, reps), min(length, self.max_length))
            chunks = [Chunk(0, chunk_ids, [[1]]) for _ in range(rows)]
            self.chunk_outputs(chunks)
        if torch.device(self.runner.device).type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    def _chunk_weights(self, lengths: Sequence[int], probs: np.ndarray) -> np.ndarray:
        """Weights of an article's chunks (in text order) in its sentiment and score
        (``sentiment_aggregation``); impact and topics combine on their own (max/mean, max)."""
        weights = np.asarray(lengths, dtype=np.float64)
        if self.sentiment_aggregation == "first":
            weights = np.eye(len(weights))[0]
        elif self.sentiment_aggregation == "stance" and self.scale.neutral is not None:
            stance = 1.0 - self.scale.coarse_probs(probs)[:, self.scale.neutral]
            weights = weights * (stance + 1e-6)  # all-neutral chunks: back to the length-weighted mean
        return weights / weights.sum()

    def _taught(self, p: np.ndarray) -> np.ndarray:
        """Class probabilities with the untrained classes' mass moved to the taught classes of their coarse
        class (so the three-class projection is unchanged), renormalised when a whole class is untaught."""
        if self.class_mask.all():
            return p
        kept = p * self.class_mask
        for members in self.scale.members:
            have = kept[members].sum()
            if have > 0:
                kept[members] *= p[members].sum() / have
        total = kept.sum()
        return kept / total if total > 0 else p

    def _taught_rows(self, p: np.ndarray) -> np.ndarray:
        """:meth:`_taught` for every row of ``p`` [A, K] at once."""
        if self.class_mask.all():
            return p
        kept = p * self.class_mask
        for members in self.scale.members:
            have = kept[:, members].sum(1)
            factor = np.where(have > 0, p[:, members].sum(1) / np.where(have > 0, have, 1.0), 1.0)
            kept[:, members] *= factor[:, None]
        total = kept.sum(1, keepdims=True)
        return np.where(total > 0, kept / np.where(total > 0, total, 1.0), p)

    def _aggregate(
        self, articles, chunks, tickers, probs, score, impact, topic, ticker_scores, states=None
    ) -> list[dict[str, Any]]:
        """One record per article from its chunks' outputs, with array operations over the whole window
        (segment sums and maxima over each article's run of chunks), not a Python loop per article: on a
        GPU this runs in the scoring process for every article. The rules are :meth:`_chunk_weights`'
        and :meth:`_taught`'s (a test compares them article by article)."""
        n = len(chunks)
        owner = np.fromiter((c.article for c in chunks), dtype=np.int64, count=n)
        lengths = np.fromiter((len(c.input_ids) for c in chunks), dtype=np.float64, count=n)
        # The preparer emits each article's chunks together, in text order: one run per article.
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        if len(starts) != len(articles) or not np.array_equal(owner[starts], np.arange(len(articles))):
            raise ValueError("chunks must come grouped by article, in article order (Preparer's output)")
        counts = np.diff(np.r_[starts, n])
        if self.sentiment_aggregation == "first":
            weights = np.zeros(n)
            weights[starts] = 1.0
        elif self.sentiment_aggregation == "stance" and self.scale.neutral is not None:
            stance = 1.0 - self.scale.coarse_probs(probs)[:, self.scale.neutral]
            weights = lengths * (stance + 1e-6)  # all-neutral chunks: back to the length-weighted mean
        else:
            weights = lengths
        weights = weights / np.repeat(np.add.reduceat(weights, starts), counts)
        p = self._taught_rows(np.add.reduceat(probs * weights[:, None], starts))
        raw_score = (
            self.scale.expected_score(p)
            if "sentiment_score" in self.untrained_heads
            else np.add.reduceat(score * weights, starts)
        )
        label, coarse, banded = self.scale.card(p, raw_score, self.class_mask)
        taught = np.asarray(self.taught_topics, dtype=np.int64)
        topic_rows = (
            np.maximum.reduceat(topic, starts)[:, taught] if len(taught) else np.zeros((len(starts), 0))
        )
        if "impact" in self.untrained_heads:
            impacts: list[float | None] = [None] * len(starts)
        elif self.impact_aggregation == "max":
            impacts = np.maximum.reduceat(impact, starts).tolist()
        else:
            impacts = np.add.reduceat(impact * weights, starts).tolist()
        embeddings = np.add.reduceat(states * weights[:, None], starts) if states is not None else None
        topic_names = [self.topics[i] for i in self.taught_topics]
        labels, coarses, banded_l = label.tolist(), coarse.tolist(), banded.tolist()
        p_rows, t_rows = p.tolist(), topic_rows.tolist()
        records = []
        for a, article in enumerate(articles):
            ticker_out = []
            first = int(starts[a])
            for k, ticker in enumerate(tickers[a]):
                found = [
                    ticker_scores[i][k] for i in range(first, first + counts[a]) if k in ticker_scores[i]
                ]
                value = None
                if found and "tickers" not in self.untrained_heads:
                    total = sum(m for _, m in found)
                    value = float(sum(s * m for s, m in found) / total)
                ticker_out.append({"ticker": ticker, "sentiment_score": value})
            t = t_rows[a]
            record = {
                "id": article.id,
                "sentiment": self.labels[labels[a]],
                "sentiment_coarse": self.scale.coarse[coarses[a]],
                "sentiment_probs": p_rows[a],
                "sentiment_score": banded_l[a],
                "impact": impacts[a],
                "topics": [name for name, x in zip(topic_names, t) if x >= self.topic_threshold],
                "topic_scores": [{"topic": name, "score": x} for name, x in zip(topic_names, t)],
                "tickers": ticker_out,
                "n_chunks": int(counts[a]),
            }
            if embeddings is not None:
                record["embedding"] = embeddings[a].tolist()
            record.update(article.extra)
            records.append(record)
        return records


PACKAGED_TICKER_MAPS = ("us_stocknet", "india_sentfin")


def packaged_ticker_map(name: str) -> dict[str, str]:
    """A company-name map that ships in the package (newsimpact/ticker_maps/, scripts/build_ticker_maps.py)."""
    from training.packaged_models import ticker_map_text

    if name not in PACKAGED_TICKER_MAPS:
        raise ValueError(f"unknown ticker map '{name}'; packaged: {', '.join(PACKAGED_TICKER_MAPS)}")
    text = ticker_map_text(name)
    return dict(json.loads(text)["names"])


def load_ticker_map(
    path: str | None, inline: Mapping[str, str] | None, packaged: Sequence[str] = ()
) -> dict[str, str]:
    """Company-name → ticker map: packaged maps, then a JSON file ({"Alibaba": "BABA"}), then inline
    entries (a later source wins for the same name)."""
    mapping: dict[str, str] = {}
    for name in packaged:
        mapping.update(packaged_ticker_map(name))
    if path:
        mapping.update(json.loads(Path(path).read_text()))
    mapping.update(inline or {})
    return mapping
