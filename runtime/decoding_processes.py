"""Decoding in worker processes, for long runs on many cores (:func:`medclf.runtime.stream.decoded`).

Threads share one GIL, which each image's decoding takes and gives back some twenty times; processes do not.
Paths go to the workers in chunks (one message each way per chunk, not per image) and results come back in
input order. Each worker has pipes of its own rather than a queue shared by all: a worker that dies — a decoder
crash, or the kernel's out-of-memory killer on a huge image — at any moment, even halfway through sending its
results, only closes its own pipe. The parent reads end-of-file there, knows which chunks that worker held,
starts another, and decodes the chunk it was on again one file at a time in a process of its own: the run goes
on, and only a file that kills its decoder (twice) is reported. (CPython's ``ProcessPoolExecutor``, used here before,
shares one result pipe: a worker killed mid-send left half a message in it and the executor waited for ever.)
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from multiprocessing.connection import Connection, wait

import cv2
import numpy as np

from .preprocess import Preprocess
from .stream import image_or_reason  # whatever a file's decoding raised: its failure, not a dead process's

CHUNK = 8  # images per task
KILLED = "its decoding process died on it (a decoder crash, or out of memory)"
NOT_STARTED = ("decoding processes could not start (they exited with status {status} before decoding anything: "
               "a script that decodes in processes must start its work under `if __name__ == \"__main__\":`, "
               "as Python's multiprocessing requires — or decode in threads, processes=False)")

Decoded = tuple[str, np.ndarray | None, str | None]  # (path, image, None) or (path, None, reason)
Result = tuple[np.ndarray | None, str | None]  # (image, None) or (None, reason)
Task = tuple[int, list[str]]  # (chunk number, paths)


def start_processes(workers: int, preprocess: Preprocess) -> DecodingProcesses | None:
    """``workers`` decoding processes, or None where they cannot start: their server listens on a socket in the
    temporary folder, and a read-only root filesystem has none ("No usable temporary directory"), a long TMPDIR
    path makes one too long ("AF_UNIX path too long"). Either ended a 1,500-image run with no answer at all."""
    try:
        return DecodingProcesses(workers, preprocess)
    except OSError:
        return None


def decoded_in_processes(paths: Iterable[str], pool: DecodingProcesses, ahead: int) -> Iterator[Decoded]:
    """``(path, image, None)`` or ``(path, None, reason)`` per path, in order, up to ``ahead`` images ahead
    (at least two chunks per worker, so that none waits); ``pool`` is shut down at the end."""
    ahead_chunks = max(ahead // CHUNK, 2 * len(pool.workers))
    try:
        pending: deque[Task] = deque()
        paths = iter(paths)
        chunks = iter(lambda: list(islice(paths, CHUNK)), [])  # until a chunk comes back empty
        for number, chunk in enumerate(chunks):
            pool.submit((number, chunk))
            pending.append((number, chunk))
            if len(pending) >= ahead_chunks:
                yield from _paired(*pending.popleft(), pool)
        while pending:
            yield from _paired(*pending.popleft(), pool)
    finally:
        pool.shutdown()


def _paired(number: int, chunk: list[str], pool: DecodingProcesses) -> Iterator[Decoded]:
    for path, (image, reason) in zip(chunk, pool.result(number)):
        yield path, image, reason


class DecodingProcesses:
    """Decoding processes, each fed chunks through its own pipes, that outlive any one of them dying."""

    def __init__(self, workers: int, preprocess: Preprocess) -> None:
        self.preprocess = preprocess
        self.done: dict[int, list[Result]] = {}  # results received, by chunk number
        self.isolation: _Worker | None = None  # decodes one file at a time, after a worker died
        self.answered = False  # whether any worker has sent results: one that dies before never started
        self.workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self.workers.append(_Worker(preprocess))
        except BaseException:  # those started are not left running
            self.shutdown()
            raise

    def submit(self, task: Task) -> None:
        worker = min(self.workers, key=lambda w: len(w.held))
        try:
            worker.send(task)
        except OSError:  # it has died since it last answered
            self._lost(worker)
            self.workers[-1].send(task)  # to its replacement; one that cannot take it either is the caller's error

    def result(self, number: int) -> list[Result]:
        """The results of chunk ``number``, waiting for whichever worker holds it (and for the others meanwhile)."""
        while number not in self.done:
            busy = {worker.results: worker for worker in self.workers if worker.held}
            for connection in wait(list(busy)):
                worker = busy[connection]
                if worker not in self.workers:  # found dead and replaced meanwhile (sending it another chunk)
                    continue
                try:
                    received, results = connection.recv()
                except (EOFError, OSError):  # it died, perhaps halfway through a message: that pipe is its alone
                    self._lost(worker)
                    continue
                worker.held.popleft()
                self.done[received] = results
                self.answered = True
        return self.done.pop(number)

    def _lost(self, worker: _Worker) -> None:
        """Replace a dead worker; decode the chunk it was on again one file per process, and send on the rest. A
        worker that exited with a status of its own before any result came back never started (a decoder crash
        is a signal, and a decoding failure an answer): every file would be called a crash, slowly."""
        worker.process.join(timeout=5)
        if not self.answered and (worker.process.exitcode or 0) > 0:
            raise RuntimeError(NOT_STARTED.format(status=worker.process.exitcode))
        self.workers.remove(worker)
        worker.stop()
        self.workers.append(_Worker(self.preprocess))
        if worker.held:
            number, paths = worker.held.popleft()
            self.done[number] = [self._alone(path) for path in paths]
        for task in worker.held:
            self.submit(task)

    def _alone(self, path: str) -> Result:
        """One file in a process that decodes nothing else meanwhile. Twice: a process killed from outside by
        chance (or found dead before it started) is not this file's doing, but a file that kills its decoder
        twice is reported."""
        for _ in range(2):
            if self.isolation is None or not self.isolation.process.is_alive():
                self.isolation = _Worker(self.preprocess)
            try:
                self.isolation.send((-1, [path]))
                (result,) = self.isolation.results.recv()[1]
                self.isolation.held.popleft()
                return result
            except (EOFError, OSError):
                self.isolation.stop()
                self.isolation = None
        return None, KILLED

    def shutdown(self) -> None:
        """Stop every worker now: a caller that stops early does not wait for the read-ahead."""
        for worker in self.workers + [self.isolation] * (self.isolation is not None):
            worker.stop()


class _Worker:
    """One decoding process and the parent's ends of its two pipes (the parent keeps no copy of the child's
    ends, so when the process dies its result pipe reads end-of-file)."""

    def __init__(self, preprocess: Preprocess) -> None:
        context = _context()
        tasks_end, self.tasks = context.Pipe(duplex=False)
        self.results, results_end = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(tasks_end, results_end, preprocess), daemon=True,
                                       name="medclf-decode")
        self.process.start()
        tasks_end.close()
        results_end.close()
        self.held: deque[Task] = deque()  # sent and not yet answered, in the order it answers them

    def send(self, task: Task) -> None:
        self.tasks.send(task)
        self.held.append(task)

    def stop(self) -> None:
        self.process.terminate()  # it only reads files: nothing of the user's to lose
        self.process.join()
        self.tasks.close()
        self.results.close()


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fresh server process that has imported the decoder once (~0.3 s), so each starts
    in milliseconds. Never forked from this process: OpenCV's thread pool does not survive fork() and can
    hang the child (opencv#5150), and this one may have used it."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows: each worker starts afresh
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _serve(tasks: Connection, results: Connection, preprocess: Preprocess) -> None:
    """A decoding process: chunks in, results out, until the parent closes its end. Results go out from a
    thread of their own, so that decoding the next chunk does not wait for the parent to read the last.
    Ctrl-C is the parent's to handle; OpenCV's own threads would only oversubscribe the cores."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_send_all, args=(outbox, results), daemon=True).start()
    try:
        while True:
            number, paths = tasks.recv()
            outbox.put((number, [image_or_reason(path, preprocess) for path in paths]))
    except (EOFError, OSError):  # the parent has gone or stopped listening
        pass


def _send_all(outbox: queue.SimpleQueue, results: Connection) -> None:
    try:
        while True:
            results.send(outbox.get())
    except OSError:  # the parent stopped reading
        pass

