"""Decoding in worker processes, for long runs on many cores (:func:`medclf.runtime.stream.decoded`).

Threads share one GIL, which each image's decoding takes and gives back some twenty times; processes do not.
Paths go to the workers in chunks (one message each way per chunk, not per image) and results come back in
input order. A worker that dies — a decoder crash, or the kernel's out-of-memory killer on a huge image — would
break a ``ProcessPoolExecutor`` for good; here the pool is replaced and the chunks that were in flight are
decoded again one file at a time in a process of their own, so the run goes on and only a file that kills its
decoder is reported. One case is beyond this: a worker killed from outside while it sends its results can leave
half a message in the pipe the pool shares, and CPython's executor then waits for the rest for ever (its
results are ~0.6 MB a chunk; the kernel's out-of-memory killer picks the far larger parent first).
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

import cv2
import numpy as np

from .preprocess import ImageError, Preprocess, load_image

CHUNK = 8  # images per task
KILLED = "its decoding process died on it (a decoder crash, or out of memory)"

Decoded = tuple[str, np.ndarray | None, str | None]  # (path, image, None) or (path, None, reason)


def decoded_in_processes(paths: Iterable[str], preprocess: Preprocess, workers: int, ahead: int) -> Iterator[Decoded]:
    """``(path, image, None)`` or ``(path, None, reason)`` per path, in order, up to ``ahead`` images ahead
    (at least two chunks per worker, so that none waits)."""
    ahead = max(ahead, 2 * workers * CHUNK)
    pool = DecodingProcesses(workers)
    try:
        pending: deque[tuple[list[str], Future]] = deque()
        paths = iter(paths)
        while chunk := list(islice(paths, CHUNK)):
            pending.append((chunk, pool.submit(chunk, preprocess)))
            if len(pending) * CHUNK >= ahead:
                yield from pool.results(*pending.popleft(), preprocess)
        while pending:
            yield from pool.results(*pending.popleft(), preprocess)
    finally:
        pool.shutdown()


class DecodingProcesses:
    """A pool of decoding processes that outlives one of them dying (see the module's docstring)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = _start(workers)
        self.single: ProcessPoolExecutor | None = None  # one file at a time, after a worker died

    def submit(self, chunk: list[str], preprocess: Preprocess) -> Future:
        try:
            return self.pool.submit(_load_chunk, chunk, preprocess)
        except BrokenProcessPool:  # a worker died since the last submission
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = _start(self.workers)
            return self.pool.submit(_load_chunk, chunk, preprocess)

    def results(self, chunk: list[str], future: Future, preprocess: Preprocess) -> Iterator[Decoded]:
        try:
            pairs = future.result()
        except BrokenProcessPool:  # this chunk was in flight when a worker died
            pairs = [self._alone(path, preprocess) for path in chunk]
        for path, (image, reason) in zip(chunk, pairs):
            yield path, image, reason

    def _alone(self, path: str, preprocess: Preprocess) -> tuple[np.ndarray | None, str | None]:
        """One file in a process that decodes nothing else meanwhile: if it dies, this file killed it."""
        self.single = self.single or _start(1)
        try:
            return self.single.submit(_load_chunk, [path], preprocess).result()[0]
        except BrokenProcessPool:
            self.single.shutdown(wait=False)
            self.single = None
            return None, KILLED

    def shutdown(self) -> None:
        for pool in (self.pool, self.single):
            if pool is not None:
                pool.shutdown(cancel_futures=True)  # a caller that stops early does not wait for the read-ahead


def _start(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_context(), initializer=_start_worker)


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fresh server process that has imported the decoder once (~0.3 s), so each starts
    in milliseconds. Never forked from this process: OpenCV's thread pool does not survive fork() and can
    hang the child (opencv#5150), and this one may have used it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows: each worker starts afresh
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _start_worker() -> None:
    """Ctrl-C is the parent's to handle; OpenCV's own threads would only oversubscribe the cores."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def _load_chunk(paths: list[str], preprocess: Preprocess) -> list[tuple[np.ndarray | None, str | None]]:
    """In a decoding process: ``(image, None)`` or ``(None, reason)`` per path."""
    results: list[tuple[np.ndarray | None, str | None]] = []
    for path in paths:
        try:
            results.append((load_image(path, preprocess), None))
        except ImageError as exc:
            results.append((None, exc.reason))
    return results
