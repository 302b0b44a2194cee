"""onnxruntime's optimized graph of a model, saved once per machine, so that later starts skip optimizing it.

Every CPU session re-optimizes the graph it loads (fusions, the NCHWc layout): for the packaged model that is
54 ms (median; 19 ms from the saved optimized graph) of a one-image ``medclf-run`` that takes about 0.19 s.
The saved graph is specific to this CPU (NCHWc blocks follow its vector width) and to this onnxruntime, so the
cache key holds both, and the model file's path, size, modification and change times and inode: an edited,
re-exported or copied-over file gets a new entry, which replaces the old one. Only ``medclf-run`` asks for it — a
one-shot run is where start-up is the whole cost; a long-lived ``Classifier`` saves nothing worth a file in the
user's cache.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from pathlib import Path

import onnxruntime as ort

from .cache import default_cache_dir
from .cpu import cpu_signature

UNUSED_DAYS = 30  # an entry no run has started from for this long is removed when another is written


def optimized_session(model: Path, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    """A CPU session for ``model``: from its cached optimized graph (optimizing then off: it is done), else made
    from ``model`` while onnxruntime writes that graph into the cache. Without a usable cache (no folder, a
    damaged entry, a full disk), an ordinary session; a bad ``model`` raises as onnxruntime does."""
    entry = _entry(model)
    if entry is not None and entry.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(os.fspath(entry), options, providers=providers)
            with contextlib.suppress(OSError):
                os.utime(entry)  # last used now: entries unused for UNUSED_DAYS are removed (_remove_stale)
            return session
        except Exception:  # damaged: made again below
            entry.unlink(missing_ok=True)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if entry is not None:
        written = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        options.optimized_model_filepath = os.fspath(written)
        options.log_severity_level = 3  # its warning that the saved graph suits this machine only: the key does
        try:
            session = ort.InferenceSession(os.fspath(model), options, providers=providers)
        except Exception:  # could not save (or a bad model: said again below, by the ordinary session)
            options.optimized_model_filepath = ""
        else:
            if written.is_file():
                with contextlib.suppress(OSError):
                    os.replace(written, entry)
                    _remove_stale(entry)
            return session
    return ort.InferenceSession(os.fspath(model), options, providers=providers)


def _remove_stale(entry: Path) -> None:
    """The entries of the same model file on this machine from before it was rewritten, and any not used for
    UNUSED_DAYS (a model deleted or moved leaves its entry behind): the cache holds about one graph per model in
    use and machine. Another CPU's or onnxruntime's entry stays: a cache shared by several nodes (an NFS home, one
    volume) or virtual environments evicted the others' entries at every start, each re-optimizing for ever."""
    same_file_here = entry.name.rsplit("-", 1)[0] + "-"  # "<path>-<machine>-"
    unused_since = time.time() - UNUSED_DAYS * 86400
    for other in entry.parent.glob("*.onnx"):
        with contextlib.suppress(OSError):
            if other != entry and (other.name.startswith(same_file_here) or other.stat().st_mtime < unused_since):
                other.unlink()


def _entry(model: Path) -> Path | None:
    """``<hash of the path>-<hash of this machine's CPU and onnxruntime>-<hash of the file's identity>.onnx`` in
    the cache, or None where the cache folder cannot be made or written."""
    try:
        info = model.stat()
        folder = default_cache_dir() / "ort-optimized"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    # CRC-32s, not a cryptographic hash: a name, not a guard (and hashlib's import alone costs 4 ms of 0.2 s)
    where = zlib.crc32(os.fsencode(model.resolve()))
    # the change time and inode too: a copy that keeps the old file's size and time (cp -p, rsync -a, tar) is
    # another model all the same, and the kernel sets those two anew whatever the copy preserves
    stamp = zlib.crc32(f"{info.st_size} {info.st_mtime_ns} {info.st_ctime_ns} {info.st_ino}".encode())
    machine = zlib.crc32(f"{ort.__version__} {cpu_signature()}".encode())
    return folder / f"{where:08x}-{machine:08x}-{stamp:08x}.onnx"
