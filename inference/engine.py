"""The Scorer: a window of articles in, scored records out. Token-budget batches of chunks (prepared by
inference/prep.py), one forward pass per chunk (inference/runner.py: any exported model folder, merged,
adapter or onnx), out-of-memory splits, and the aggregation of an article's chunks into its record.
Never imports Lightning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from inference.prep import Article, Chunk, Prepared, Preparer
from inference.runner import Pending, Runner
from training import model_meta
from training.modeling import load_tokenizer, read_meta
from training.records import untrained
from training.scale import Scale

log = logging.getLogger("newsimpact.score")


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
        tokenizer: Any = None,
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
        # a tokenizer given by the caller (the card's CoreTokenizer), else the folder's through transformers
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
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
        # (faster than 16,384 on the CPU box, docs/experiments/scoring.md); a GPU wants big batches.
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
        not; docs/experiments/scoring.md), so exact-length batches grow memory with the corpus.
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

    def _segment_weights(
        self, chunks: list[Chunk], n_articles: int, probs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each article's run of chunks (first index, count) and every chunk's weight within its article
        under ``sentiment_aggregation`` (the weights of an article's chunks sum to 1)."""
        n = len(chunks)
        owner = np.fromiter((c.article for c in chunks), dtype=np.int64, count=n)
        lengths = np.fromiter((len(c.input_ids) for c in chunks), dtype=np.float64, count=n)
        # The preparer emits each article's chunks together, in text order: one run per article.
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        if len(starts) != n_articles or not np.array_equal(owner[starts], np.arange(n_articles)):
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
        return starts, counts, weights / np.repeat(np.add.reduceat(weights, starts), counts)

    def _ticker_sentiments(
        self, tickers: list[str], chunk_scores: Sequence[dict[int, tuple[float, int]]]
    ) -> list[dict[str, Any]]:
        """An article's ticker sentiments: per ticker, its chunks' scores weighted by mention tokens (null
        where no chunk mentions it, or the ticker head was never taught)."""
        out = []
        for k, ticker in enumerate(tickers):
            found = [scores[k] for scores in chunk_scores if k in scores]
            value = None
            if found and "tickers" not in self.untrained_heads:
                value = float(sum(s * m for s, m in found) / sum(m for _, m in found))
            out.append({"ticker": ticker, "sentiment_score": value})
        return out

    def _aggregate(
        self, articles, chunks, tickers, probs, score, impact, topic, ticker_scores, states=None
    ) -> list[dict[str, Any]]:
        """One record per article from its chunks' outputs, with array operations over the whole window
        (segment sums and maxima over each article's run of chunks), not a Python loop per article: on a
        GPU this runs in the scoring process for every article. The rules are :meth:`_chunk_weights`'
        and :meth:`_taught`'s (a test compares them article by article)."""
        starts, counts, weights = self._segment_weights(chunks, len(articles), probs)
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
            own = ticker_scores[int(starts[a]) : int(starts[a] + counts[a])]
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
                "tickers": self._ticker_sentiments(tickers[a], own),
                "n_chunks": int(counts[a]),
            }
            if embeddings is not None:
                record["embedding"] = embeddings[a].tolist()
            record.update(article.extra)
            records.append(record)
        return records
