"""The scorer's data path: windows of articles prepared (tokenized, chunked, tickers found) ahead of the
model, in a background thread or in a pool of prep worker processes.

One process cannot tokenize fast enough for a GPU: the Python around the tokenizer (chunking, ticker
extraction and mention positions) holds the interpreter lock. ``inference.prep_workers`` processes (forked
from a fork server, :func:`_context`) each hold a copy of the :class:`Preparer` (the tokenizer and text options, sent once when
the pool starts) and prepare whole windows; the scoring process keeps a bounded number of windows in
flight (``prep_workers + 1``), consumes them in order and only batches, runs the model and writes. With
``prep_workers=0`` the windows are prepared in one background thread of the scoring process (the layout
before the pool, best where the model itself needs every core).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from training.text import normalize
from training.tickers import NameMatcher, extract_tickers, find_mentions, spans_to_tokens

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


class CoreTokenizer:
    """A model folder's fast tokenizer (``tokenizer.json``) as the :class:`Preparer` reads it, loaded with the
    ``tokenizers`` library alone: importing transformers' tokenizer classes costs most of a second of a cold
    start (``newsimpact card``). The saved ``tokenizer.json`` is the backend transformers itself would load,
    so the chunks are the same (a test compares them); slow tokenizers and folders without it need
    :func:`training.modeling.load_tokenizer`."""

    is_fast = True

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = folder / "tokenizer_config.json"
        settings = json.loads(config.read_text()) if config.is_file() else {}
        self.truncation_side = settings.get("truncation_side", "right")
        self.padding_side = settings.get("padding_side", "right")

        def token(key: str) -> str | None:
            value = settings.get(key)
            return value.get("content") if isinstance(value, dict) else value

        # as training.modeling.load_tokenizer: a decoder without a pad token pads with its end token
        pad = token("pad_token") or token("eos_token")
        self.pad_token_id = self.backend_tokenizer.token_to_id(pad) if pad else None

    @staticmethod
    def available(folder: str | Path) -> bool:
        return (Path(folder) / "tokenizer.json").is_file()

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text).ids}


def _special_template(backend: Any) -> tuple[list[int], list[int]] | None:
    """The special tokens the tokenizer's post-processor puts before and after a single text's tokens
    (BERT: [CLS] .. [SEP]; Llama: <s> ..); None when they do not simply surround them."""
    bare = backend.encode("newsimpact", add_special_tokens=False).ids
    full = backend.encode("newsimpact", add_special_tokens=True).ids
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return None


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
        # A fast tokenizer's Rust core, called directly and without truncation; the chunks are cut here as
        # slices of each text's ids (the windows transformers' call with truncation, stride and overflowing
        # tokens returns, with the same special tokens: a test compares them), at most max_chunks of them.
        # That skips building Python dicts of every field and the core's own overflow encodings
        # (docs/experiments/datapath.md). Our own copy, so its settings change nothing for other users.
        self.backend = None
        if getattr(tokenizer, "is_fast", False) and getattr(tokenizer, "truncation_side", "right") == "right":
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            backend.no_truncation()
            backend.no_padding()
            template = _special_template(backend)
            if template is not None and max_length - len(template[0]) - len(template[1]) > stride:
                self.backend = backend
                self.prefix, self.suffix = (np.asarray(x, dtype=np.int32) for x in template)
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
        tickers = [
            given if given is not None else extract_tickers(text, self.names)
            for (_, given), text in zip(articles, texts)
        ]
        spans = [
            [find_mentions(text, t, self.aliases.get(t, ())) for t in ticks]
            for text, ticks in zip(texts, tickers)
        ]
        pieces = self._sliced(texts) if self.backend is not None else self._called(texts)
        chunks: list[Chunk] = []
        tokens = 0
        for art, ids, window, offsets_of in pieces:
            entity_tokens: list[list[int]] = [[] for _ in spans[art]]
            if any(spans[art]):  # only where a ticker is named, only the spans inside this chunk's text
                lo, hi = window
                for t, ticker_spans in enumerate(spans[art]):
                    inside = [sp for sp in ticker_spans if sp[0] < hi and sp[1] > lo]
                    if inside:
                        entity_tokens[t] = spans_to_tokens(offsets_of(), inside)
            chunks.append(Chunk(art, ids, entity_tokens))
            tokens += len(ids)
        return Prepared(chunks, tickers, tokens)

    def _sliced(self, texts: list[str]) -> Iterator[tuple[int, np.ndarray, tuple[int, int], Any]]:
        """Per chunk: its article, ids, the character range its tokens cover, and a function giving its
        tokens' offsets (special tokens (0, 0)); the windows of a truncating call with stride."""
        assert self.backend is not None
        body = self.max_length - len(self.prefix) - len(self.suffix)
        step = body - self.stride
        pad_before, pad_after = (
            np.zeros((len(self.prefix), 2), np.int64),
            np.zeros((len(self.suffix), 2), np.int64),
        )
        for art, encoding in enumerate(self.backend.encode_batch(texts, add_special_tokens=False)):
            ids = np.asarray(encoding.ids, dtype=np.int32)
            offsets = encoding.offsets
            total, start = len(ids), 0
            for _ in range(self.max_chunks):
                stop = min(start + body, total)
                window = (offsets[start][0], offsets[stop - 1][1]) if stop > start else (0, 0)

                def offsets_of(
                    start: int = start, stop: int = stop, offsets: list[Any] = offsets
                ) -> np.ndarray:
                    inner = np.asarray(offsets[start:stop], dtype=np.int64).reshape(-1, 2)
                    return np.concatenate([pad_before, inner, pad_after])

                yield art, np.concatenate([self.prefix, ids[start:stop], self.suffix]), window, offsets_of
                if stop >= total:
                    break
                start += step

    def _called(self, texts: list[str]) -> Iterator[tuple[int, np.ndarray, tuple[int, int], Any]]:
        """As :meth:`_sliced`, through transformers' tokenizer call (tokenizers without a fast core)."""
        owners, ids_of, offsets_of = self._encode(texts)
        per_article: dict[int, int] = {}
        for c, art in enumerate(owners):
            if per_article.get(art, 0) >= self.max_chunks:
                continue
            per_article[art] = per_article.get(art, 0) + 1
            offsets = offsets_of(c)
            real = [o for o in (*offsets[:2], *offsets[-2:]) if o[1] > o[0]]  # specials: (0, 0)
            window = (min(o[0] for o in real), max(o[1] for o in real)) if real else (0, 0)
            yield (
                art,
                np.asarray(ids_of(c), dtype=np.int32),
                window,
                lambda c=c: np.asarray(offsets_of(c), np.int64),
            )

    def _encode(self, texts: list[str]) -> tuple[list[int], Any, Any]:
        """Every chunk's article index, and functions from a chunk's index to its ids and its offsets."""
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


_PREPARER: Preparer | None = None


def _start_worker(preparer: Preparer) -> None:
    """A prep process: one tokenizer thread (the pool is the parallelism), then keep the preparer."""
    global _PREPARER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _PREPARER = preparer


def _prepare(articles: list[tuple[str, list[str] | None]]) -> Prepared:
    assert _PREPARER is not None, "prep worker started without a preparer"
    return _PREPARER(articles)


def _context() -> Any:
    """Where it exists, a fork server that has imported this module (torch, the tokenizer) once: each prep
    process is then forked from it in milliseconds, not started afresh (1-2 s each, one after the other:
    ~10 s for 6 on the CPU box, against ~5 s for the server and all 6). Never a fork of the scoring process
    itself, which may hold a CUDA context and torch's thread pools. Elsewhere, spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["inference.prep"])
        return context
    return multiprocessing.get_context("spawn")


def default_prep_workers(cores: int) -> int:
    """``inference.prep_workers`` left null: the worker's cores minus one (the one that drives the model)."""
    return max(0, cores - 1)


class PrepPool:
    """Prepares windows ahead of the model: ``workers`` processes (0: one background thread).

    The first window of each stream is prepared in the background thread and the processes start only
    when a second window comes (then in the background, while the first is scored): a job of a few
    rows never pays their start-up (a couple of seconds each: Python, torch and the tokenizer)."""

    def __init__(self, preparer: Preparer, workers: int, first_in_thread: bool = True):
        self.preparer = preparer
        self.workers = workers
        self.first_in_thread = first_in_thread  # False: every window to the processes (benchmarks)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        self.processes: Executor | None = None

    def _processes(self) -> Executor:
        if self.processes is None:
            self.processes = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=_context(),
                initializer=_start_worker,
                initargs=(self.preparer,),
            )
        return self.processes

    @property
    def depth(self) -> int:
        """Windows in flight: one per worker plus the one being scored."""
        return self.workers + 1 if self.workers else 2

    def submit(self, window: list[Article], first: bool = False) -> Future[Prepared]:
        pairs = [(a.text, a.tickers) for a in window]
        if self.workers and not (first and self.first_in_thread):
            return self._processes().submit(_prepare, pairs)
        return self.thread.submit(self.preparer, pairs)

    def prepared(self, windows: Iterable[list[Article]]) -> Iterator[tuple[list[Article], Prepared]]:
        """(window, its preparation) in input order, with up to ``depth`` windows prepared ahead.

        A feeder thread reads the windows (the input file is parsed there too) and submits them, so the
        scoring thread never blocks on the input or on starting a prep process (a spawned process is
        handed its preparer only once it has imported its modules, a second or two each)."""
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def feed() -> None:
            try:
                for index, window in enumerate(windows):
                    if stop.is_set():
                        return
                    ready.put((window, self.submit(window, first=index == 0)))
            except BaseException as err:  # noqa: BLE001 - re-raised in the scoring thread
                ready.put(err)
                return
            ready.put(None)

        feeder = threading.Thread(target=feed, name="prepare-feeder", daemon=True)
        feeder.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                window, future = item
                yield window, future.result()
        finally:
            stop.set()
            while feeder.is_alive() or not ready.empty():  # unblock the feeder, drop what it queued
                try:
                    item = ready.get(timeout=0.05)
                except queue.Empty:
                    continue
                if isinstance(item, tuple):
                    item[1].cancel()
            feeder.join()

    def close(self) -> None:
        self.thread.shutdown(wait=True, cancel_futures=True)
        if self.processes is not None:
            self.processes.shutdown(wait=True, cancel_futures=True)
            self.processes = None

    def __enter__(self) -> PrepPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
