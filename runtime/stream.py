"""Decode ahead of inference: images are read and resized by worker threads while the model runs.

OpenCV and onnxruntime both release the GIL, so threads overlap for real: while one batch is in the model,
the next ones are being decoded. Results come back in input order, a bounded number in flight, so memory
stays flat on a folder of any size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .preprocess import ImageError, Preprocess, load_image


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode_workers() -> int:
    """Decoding threads: one per usable CPU, at most 8 (beyond that the disk is the limit)."""
    return max(1, min(8, usable_cpus()))


def decoded(paths: Iterable[str], preprocess: Preprocess, workers: int | None = None,
            ahead: int = 64) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """``(path, image, None)`` or ``(path, None, reason)`` per path, in order, decoding up to ``ahead`` ahead."""
    with ThreadPoolExecutor(workers or decode_workers(), thread_name_prefix="medclf-decode") as pool:
        pending: deque[tuple[str, Future]] = deque()
        for path in paths:
            pending.append((path, pool.submit(load_image, path, preprocess)))
            if len(pending) >= ahead:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _result(path: str, future: Future) -> tuple[str, np.ndarray | None, str | None]:
    try:
        return path, future.result(), None
    except ImageError as exc:
        return path, None, exc.reason
