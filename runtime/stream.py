"""Decode ahead of inference: worker threads (or processes) read and resize images while the model runs.

OpenCV and onnxruntime both release the GIL, so threads overlap for real: while one batch is in the model,
the next ones are being decoded; on many cores, worker processes go further (:func:`decoded`). Results come
back in input order, a bounded number in flight, so memory stays flat on a folder of any size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .cpu_limit import usable_cpus
from .preprocess import ImageError, Preprocess, load_image


def decode_workers(processes: bool = False) -> int:
    """Decoding workers, one per usable CPU up to a limit. Threads: at most 4, since more only queue for the
    GIL (16-core host, 4,096 blood smears: 4 threads 2,200-2,800 images/s, 8 threads 1,600-2,700, 16 threads
    1,250-2,700). Processes: at most 16 (8 fed a GPU 6,600 images/s, 16 7,000: by then the caller, which
    batches their results, is the bound)."""
    return max(1, min(16 if processes else 4, usable_cpus()))


PROCESSES_FROM = 1500  # images; see use_processes


def use_processes(count: int, cpus: int | None = None) -> bool:
    """Decode ``count`` images in processes rather than threads? Where there are cores for the GIL to leave
    idle (4 or more) and enough images to repay the processes' start (~0.6 s for 16 of them). 16-core host,
    blood smears: CUDA 2,000-2,200 images/s with threads, 6,600-7,000 with processes; CPU 840 vs 1,300; so
    ~0.35-0.4 ms saved per image, break-even near 1,500 images. ``cpus``: default, this process's."""
    return count >= PROCESSES_FROM and (usable_cpus() if cpus is None else cpus) >= 4


def decoded(paths: Iterable[str], preprocess: Preprocess, workers: int | None = None, ahead: int = 64,
            processes: bool = False) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """``(path, image, None)`` or ``(path, None, reason)`` per path, in order, decoding up to ``ahead`` ahead.

    ``processes``: decode in worker processes instead of threads. Each image's decoding takes and gives back
    the GIL some twenty times between OpenCV and numpy calls, so on many cores threads queue for it: on a
    16-core host, threads peak at ~2,700 blood-smear images/s, 16 processes reach ~9,800. The processes
    start in ~0.6 s (once per Python process: their server stays), so they pay on long runs only
    (:func:`use_processes`). A script that uses them needs the ``if __name__ == "__main__":`` guard, as any
    :mod:`multiprocessing` user does. Where they cannot start (no usable temporary folder for their server's
    socket: a read-only root filesystem, a TMPDIR path too long for a socket), threads decode instead: the same
    answers, at the threads' speed.
    """
    if processes:
        from .decoding_processes import decoded_in_processes, start_processes  # here: costs a one-shot run 30 ms

        if (processes_pool := start_processes(workers or decode_workers(processes=True), preprocess)) is not None:
            yield from decoded_in_processes(paths, processes_pool, ahead)
            return
    pool = ThreadPoolExecutor(workers or decode_workers(), thread_name_prefix="medclf-decode")
    try:
        pending: deque[tuple[str, Future]] = deque()
        for path in paths:
            pending.append((path, pool.submit(image_or_reason, path, preprocess)))
            if len(pending) >= ahead:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        pool.shutdown(cancel_futures=True)  # a caller that stops early does not wait for the read-ahead


def _result(path: str, future: Future) -> tuple[str, np.ndarray | None, str | None]:
    return path, *future.result()


def image_or_reason(path: str, preprocess: Preprocess) -> tuple[np.ndarray | None, str | None]:
    """One file's pixels, or why not: whatever its decoding raised is that file's failure, not the batch's (the
    decoders turn what they know into an ImageError; OpenCV out of memory on a resize is a cv2.error). Decoding
    threads and decoding processes both answer with it."""
    try:
        return load_image(path, preprocess), None
    except ImageError as exc:
        return None, exc.reason
    except Exception as exc:  # noqa: BLE001 — a batch goes on past one file, whatever stopped it
        return None, f"could not be decoded ({type(exc).__name__}: {exc})"
