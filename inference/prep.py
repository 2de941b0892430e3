"""The scorer's data path: windows of articles prepared (tokenized, chunked, tickers found) ahead of the
model, in a background thread or in a pool of prep worker processes.

One process cannot tokenize fast enough for a GPU: the Python around the tokenizer (chunking, ticker
extraction and mention positions) holds the interpreter lock. ``inference.prep_workers`` processes (forked
from a fork server, :func:`_context`) each hold a copy of the :class:`~inference.engine.Preparer` (the tokenizer and text options, sent once when
the pool starts) and prepare whole windows; the scoring process keeps a bounded number of windows in
flight (``prep_workers + 1``), consumes them in order and only batches, runs the model and writes. With
``prep_workers=0`` the windows are prepared in one background thread of the scoring process (the layout
before the pool, best where the model itself needs every core).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from inference.engine import Article, Prepared, Preparer

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
