"""Write files so a reader never sees half of one: write a temporary sibling, then rename it into place."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, NoReturn

import cv2
import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

MAX_NAME_BYTES = 255
STREAMS = ("/proc/", "/dev/std", "/dev/fd/")  # a process's own streams (/dev/stdout → /proc/self/fd/1): not
# files to replace, whatever they are redirected to (a regular file elsewhere under /dev, /dev/shm, is one)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", durable: bool = True, **options) -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``options`` go to :func:`open`); on success it replaces ``path``, on
    error it is removed. The temporary name is unique and short (``.<start of the name>.<random>.tmp``): a
    name near the file system's 255 bytes must fit too, and two writers never share one.

    A link is written through (the file it names is replaced; the link stays), a file replaced keeps its
    permissions (a results file kept private stays so), and a stream — what is no regular file (a pipe, a
    terminal) or is one of this process's own descriptors (``/dev/stdout`` redirected to a file) — is written
    in place, appended to, as there is nothing to rename over and what it already holds is not ours.

    ``durable`` (the default) has the file's bytes and then its new name reach the disk before this returns, so a
    power cut cannot leave a model, report or results file empty under its final name (~3 ms); images made in
    bulk (heatmaps, augmented copies), which a rerun makes again, pass ``durable=False``."""
    if _is_stream(path):
        own = _own_descriptor(path)
        if own is not None:  # through the process's own descriptor: its offset, not a second one at 0
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            with open(os.dup(own), mode.replace("w", "a"), **options) as handle:
                yield handle
            return
        with open(path, mode.replace("w", "a"), **options) as handle:
            yield handle
        return
    try:
        kept = os.stat(path).st_mode
    except OSError:
        kept = None
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # a link's target's folders are not ours to make
    path = Path(os.path.realpath(path))
    # not mkstemp: its files are the owner's alone (0600), and a model or report must keep the usual permissions
    tmp = path.with_name(f".{path.name[:40]}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, mode, **options) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if kept is not None:
            os.chmod(tmp, stat.S_IMODE(kept))
        os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def written_together(folder: str | os.PathLike[str], last: str) -> Iterator[Path]:
    """A hidden folder inside ``folder`` to write files that belong together in (a record and its pictures); on
    success they are moved into ``folder``, ``last`` after the others, on error dropped. A run stopped while they
    are being made (seconds, for pictures) leaves the earlier set whole rather than new pictures beside an old
    record, and whoever finds ``last`` new finds the others new too."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=folder, prefix=".staged."))
    try:
        yield staged
        for written in sorted(staged.iterdir(), key=lambda path: path.name == last):
            os.replace(written, folder / written.name)
        _sync_folder(folder)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def lock_at_once(descriptor: int) -> bool | None:
    """Take the exclusive lock of the file or folder open at ``descriptor`` without waiting (``flock``: released
    when it is closed, or when the process ends, however it ends): False where another process holds it, None
    where nothing can be locked (Windows). A file system without locks (some network shares) raises OSError."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def replace_durably(written: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """``os.replace(written, path)`` for a file another library wrote (Keras, onnx), its bytes and then its new
    name on the disk first, as :func:`atomic_write` does."""
    descriptor = os.open(written, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(written, path)
    _sync_folder(Path(path).resolve().parent)


def _sync_folder(folder: Path) -> None:
    """Have a rename in ``folder`` reach the disk (POSIX; where a folder cannot be opened so, as on Windows, the
    file system orders it itself)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # a file system that cannot sync a folder
        pass
    finally:
        os.close(descriptor)


def _own_descriptor(path: str | os.PathLike[str]) -> int | None:
    """The descriptor ``path`` names in this process (``/dev/stdout``: 1, ``/dev/fd/5``, ``/proc/self/fd/5``), or
    None. Opened again by name, a redirected ``> file`` gets a second offset: what the process then printed
    overwrote the start of what was written there."""
    name = os.path.abspath(path)
    standard = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    return standard.get(name)


def _is_stream(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is written in place: it exists, is no folder, and is no regular file (a pipe, a terminal)
    or is one of this process's own streams by its name or where it leads (``/dev/stdout``)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    names = (os.path.abspath(path), os.path.realpath(path))
    return not stat.S_ISDIR(mode) and (not stat.S_ISREG(mode) or any(name.startswith(STREAMS) for name in names))


def fitted_name(stem: str, tail: str, most: int = MAX_NAME_BYTES) -> str:
    """``stem + tail``, the stem shortened where the whole would pass the 255 bytes a file name may have
    (ext4, XFS, NTFS, APFS), or ``most``: names made from an input's name plus a suffix of ours must still be
    writable."""
    while len(os.fsencode(stem + tail)) > most and stem:
        stem = stem[:-1]
    return stem + tail


def unwritable(path: str | os.PathLike[str], folder: bool = False) -> str | None:
    """Why nothing can be written at ``path`` (a file, or with ``folder`` a folder to write files in), or None.
    Asked before a long run, so that it does not end, its work done, in a traceback (a read-only or missing
    mount, a typo'd path under /proc, a file where a folder should be)."""
    if not folder and _is_stream(path):  # /dev/stdout, a pipe
        return None if os.access(path, os.W_OK) else "cannot write there (Permission denied)"
    path = Path(path)
    if not folder and path.is_symlink():  # written where the link leads: that folder is the one to ask
        path = Path(os.path.realpath(path))
        if not path.parent.is_dir():
            return f"is a link to {path}, whose folder does not exist"
    if folder and path.exists() and not path.is_dir():
        return "is a file; give a folder"
    if not folder and path.is_dir():
        return "is a folder; give a file name"
    if not folder and path.is_file() and not os.access(path, os.W_OK):  # replaced by a rename, which it allows
        return "is write-protected (a file kept as it is, as the shell's > would refuse it); name another"
    directory = path if folder else path.parent
    existing = next(folder for folder in (directory, *directory.parents) if folder.exists() or folder.is_symlink())
    if not existing.is_dir():  # a file in the way of the folders to make
        return f"cannot write there ({existing} is a file)"
    try:  # where the first file or folder would be made, nothing made yet: a refused run leaves no empty folder
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_json(path: str | os.PathLike[str], value: object) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_image(path: str | os.PathLike[str], bgr: np.ndarray, durable: bool = False) -> None:
    """Encode an OpenCV (BGR) image in the format its suffix names, and write it atomically (not ``durable``
    unless asked: see :func:`atomic_write`)."""
    ok, encoded = cv2.imencode(Path(path).suffix, bgr)
    if not ok:
        raise OSError(f"{path}: cannot encode an image as {Path(path).suffix}")
    with atomic_write(path, "wb", durable=durable) as handle:
        handle.write(encoded.tobytes())


def stop_on_term(signum: int, frame: object) -> NoReturn:
    """A SIGTERM handler (systemd, docker stop, Slurm, Kubernetes): the run ends as Ctrl-C ends it, unwinding, so
    the temporary files being written are removed rather than left beside the outputs; the status is the
    shell's for the signal."""
    raise SystemExit(128 + signum)
