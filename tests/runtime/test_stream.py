"""Decoding ahead of inference: threads or processes, the same images in the same order, bad files included."""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier
from medclf.runtime.decoding_processes import CHUNK, Decoded
from medclf.runtime.stream import PROCESSES_FROM, decode_workers, decoded, use_processes


@pytest.fixture(scope="module")
def mixed_paths(blood_cells, tmp_path_factory) -> list[str]:
    """Real smears with an empty file, a text file named .jpeg and a missing path among them."""
    folder = tmp_path_factory.mktemp("mixed")
    (folder / "empty.jpeg").write_bytes(b"")
    (folder / "notes.jpeg").write_text("not an image")
    smears = [str(p) for p in sorted((blood_cells / "TEST").glob("*/*.jpeg"))[::40]]
    return smears[:10] + [str(folder / "empty.jpeg")] + smears[10:30] + [str(folder / "notes.jpeg"),
                                                                         str(folder / "missing.jpeg")] + smears[30:]


@pytest.fixture(scope="module")
def preprocess():
    return Classifier(DEFAULT_MODEL).card.preprocess


def test_processes_decode_exactly_what_threads_decode_in_the_same_order(mixed_paths, preprocess):
    by_threads = list(decoded(mixed_paths, preprocess, workers=2))
    by_processes = list(decoded(mixed_paths, preprocess, workers=2, processes=True))
    assert [(path, reason) for path, _, reason in by_processes] == [(path, reason) for path, _, reason in by_threads]
    assert [reason for _, _, reason in by_processes if reason] == [
        "empty file", "a text file, not an image", "No such file or directory"]
    for (_, threaded, _), (_, forked, _) in zip(by_threads, by_processes):
        assert (threaded is None and forked is None) or np.array_equal(threaded, forked)


def test_an_endless_input_is_read_lazily_and_can_be_abandoned(mixed_paths, preprocess):
    """A watch-folder feeding paths forever: results come while paths keep coming, and closing the stream
    cancels the read-ahead rather than waiting on it."""
    for processes in (False, True):
        stream = decoded(itertools.cycle(mixed_paths), preprocess, workers=2, processes=processes)
        first = [path for path, _, _ in itertools.islice(stream, len(mixed_paths) + 5)]
        stream.close()
        assert first == mixed_paths + mixed_paths[:5]


def decoding_processes() -> list[int]:
    """PIDs of this test's live decoding workers: children of the forkserver, itself a child of this process. A
    worker killed but not yet reaped stays in /proc as a zombie (state Z); choosing it again would kill nothing."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    servers = {pid for pid, parent in parents.items() if parent == os.getpid()}
    return [pid for pid, parent in parents.items() if parent in servers]


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory) -> str:
    """A real 8000x8000 PNG (64 megapixels, under the bomb limit) that takes a decoder about a second."""
    ramp = np.linspace(0, 255, 8000, dtype=np.float32)
    path = tmp_path_factory.mktemp("slow") / "slow.png"
    cv2.imwrite(str(path), np.repeat((np.add.outer(ramp, ramp) / 2).astype(np.uint8)[:, :, None], 3, axis=2))
    return str(path)


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc (Linux)")


def within(seconds: float, stream: Iterator[Decoded], between: Callable[[int], None] = lambda i: None) -> list:
    """Everything ``stream`` yields, calling ``between(i)`` after the i-th item; a stream that hangs fails the
    test after ``seconds`` instead of stalling the suite."""
    results: list = []

    def drain() -> None:
        for item in stream:
            results.append(item)
            between(len(results))

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"the stream hung after {len(results)} items"
    return results


def assert_same_images(got: list[Decoded], expected: list[Decoded]) -> None:
    assert [(path, reason) for path, _, reason in got] == [(path, reason) for path, _, reason in expected]
    assert all((a is None and b is None) or np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(got, expected))


@LINUX_PROC
def test_a_decoding_process_that_dies_while_decoding_costs_no_image(mixed_paths, preprocess, slow_image):
    """As a decoder crash or the kernel's out-of-memory killer would: the worker dies on the slow image; another
    takes its place, its chunk is decoded again one file per process, and every image still comes back, in
    order."""
    paths = mixed_paths[:CHUNK] + [slow_image] + mixed_paths[CHUNK:]
    stream = decoded(paths, preprocess, workers=1, processes=True)
    first = next(stream)  # the first chunk is in: the worker has gone on to the slow image

    def kill_once(i: int) -> None:
        if i == 1:
            time.sleep(0.2)
            (worker,) = decoding_processes()
            os.kill(worker, signal.SIGKILL)

    results = [first] + within(60, stream, kill_once)
    assert_same_images(results, list(decoded(paths, preprocess, 2)))


@LINUX_PROC
def test_a_decoding_process_killed_halfway_through_sending_its_results_costs_no_image(mixed_paths, preprocess):
    """A chunk of decoded smears (~400 kB) is more than a pipe holds, so while the reader is busy elsewhere each
    worker waits halfway through sending one. Killed there, it leaves half a message: only in its own pipe,
    which the parent then reads as the end of that worker (CPython's ProcessPoolExecutor, which shares one pipe
    among its workers, waited for the rest of such a message for ever)."""
    stream = decoded(mixed_paths * 3, preprocess, workers=2, processes=True)

    def kill_all_once(i: int) -> None:
        if i == 1:
            time.sleep(0.5)  # every worker has a chunk decoded and is blocked sending it
            for worker in decoding_processes():
                os.kill(worker, signal.SIGKILL)

    assert_same_images(within(60, stream, kill_all_once), list(decoded(mixed_paths * 3, preprocess, 2)))


@LINUX_PROC
def test_workers_killed_again_and_again_at_any_moment_cost_no_image(mixed_paths, preprocess):
    paths = mixed_paths * 6
    killed = []

    def kill_a_worker_every_few_images(i: int) -> None:
        if i % 7 == 0 and (workers := decoding_processes()):
            killed.append(random.Random(i).choice(workers))
            os.kill(killed[-1], signal.SIGKILL)
            time.sleep(0.005)

    results = within(120, decoded(paths, preprocess, workers=2, processes=True), kill_a_worker_every_few_images)
    assert_same_images(results, list(decoded(paths, preprocess, 2)))
    assert len(set(killed)) > 20


def test_the_classifier_gives_the_same_answers_whichever_way_it_decodes(mixed_paths):
    classifier = Classifier(DEFAULT_MODEL, streaming=True)
    threaded = [p.to_dict() for p in classifier.classify(mixed_paths, batch_size=8)]
    forked = [p.to_dict() for p in classifier.classify(mixed_paths, batch_size=8, processes=True)]
    assert forked == threaded
    assert sum("error" in p for p in forked) == 3


def test_processes_are_for_long_runs_on_machines_with_cores_to_spare():
    assert use_processes(PROCESSES_FROM, cpus=16) and use_processes(100_000, cpus=4)
    assert not use_processes(PROCESSES_FROM - 1, cpus=16)  # their start-up would not pay off
    assert not use_processes(100_000, cpus=2)  # two cores: inference needs them; threads keep up
    assert 1 <= decode_workers() <= 4  # threads beyond 4 only queue for the GIL


def test_a_decoding_process_answers_any_failure_as_that_files_as_threads_do(monkeypatch, preprocess):
    """Only an ImageError was caught there: anything else (OpenCV out of memory on a resize) ended the worker, and
    the file read "its decoding process died", with the child's traceback."""
    import cv2

    from medclf.runtime import decoding_processes, stream

    def resize_fails(path, preprocess):
        raise cv2.error("Insufficient memory")

    assert decoding_processes.image_or_reason is stream.image_or_reason  # what the thread path answers with
    monkeypatch.setattr(stream, "load_image", resize_fails)
    image, reason = decoding_processes.image_or_reason("scan.png", preprocess)
    assert image is None and reason == "could not be decoded (error: Insufficient memory)"


def test_a_script_without_a_main_guard_is_told_so_not_sent_a_crash_per_file(mixed_paths, tmp_path):
    """Python's multiprocessing starts each worker by importing the caller's script: one that starts its work at
    import (no ``if __name__ == "__main__":``) made every worker die at start, and each file was reported as
    "its decoding process died on it", after 51 s for 66 files."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from medclf.runtime import Classifier\n"
                      f"answers = list(Classifier().classify({mixed_paths[:4]!r}, processes=True))\n"
                      "print(answers[0].error)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "died on it" not in done.stdout
    assert 'RuntimeError: decoding processes could not start (they exited with status 1 before decoding anything: ' \
           'a script that decodes in processes must start its work under `if __name__ == "__main__":`' in done.stderr


def test_where_decoding_processes_cannot_start_threads_decode_instead(mixed_paths, tmp_path):
    """Their server listens on a socket in the temporary folder: a TMPDIR path too long for a socket (or a
    read-only root filesystem, with no usable temporary folder at all) ended a 1,500-image run with no answer —
    "error: writing the results failed (AF_UNIX path too long)"."""
    import subprocess
    import sys

    deep = tmp_path / ("t" * 120)
    deep.mkdir()
    script = tmp_path / "guarded.py"
    script.write_text("from medclf.runtime import Classifier\n"
                      "if __name__ == '__main__':\n"
                      f"    answers = list(Classifier().classify({mixed_paths!r}, processes=True))\n"
                      "    print(sum(answer.error is None for answer in answers), len(answers))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"TMPDIR": str(deep)})
    assert done.returncode == 0, done.stderr
    expected = list(Classifier().classify(mixed_paths))
    assert done.stdout.split() == [str(sum(answer.error is None for answer in expected)), str(len(mixed_paths))]
