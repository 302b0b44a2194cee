"""Turn the command line's INPUT arguments (files, folders, globs) into an ordered stream of file paths."""

from __future__ import annotations

import codecs
import functools
import glob
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from .annotations import segmentation_masks

# A heatmap medclf wrote (cam.overlay_name: <stem>-<8 hex>.<label>.cam.png, .gradcam.png, .gradcam-<layer>.png): an
# overlay, not a scan.
# Written into an input folder by one run, the next classified, trained on or explained its heatmaps.
_OVERLAY = re.compile(r"-[0-9a-f]{8}\..+\.(?:cam|gradcam|gradcam-[\w.-]+)\.png$")
STDIN = "-"  # an INPUT that is the image piped in (a DICOMweb fetch, a router): ``medclf-run - < scan.png``
# Folders that systems keep among the user's, never images of theirs: macOS zip archives' copy of the tree,
# Synology's thumbnails (@eaDir/<image>.jpg/SYNOPHOTO_THUMB_S.jpg: resized copies), NAS and Windows recycle bins
HOUSEKEEPING = frozenset({"__MACOSX", "@eaDir", "#recycle", "@Recycle", "#snapshot", "$RECYCLE.BIN",
                          "System Volume Information", "lost+found"})

# What OpenCV (and pydicom) decode; a GIF or an animated WebP gives its first frame. (HEIC it does not.)
# .dicom: VinDr-CXR's names; .ima: Siemens scanners' DICOM exports; .j2k: a JPEG 2000 codestream.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                              ".jp2", ".j2k", ".pbm", ".pgm", ".ppm", ".pnm", ".avif", ".dcm", ".dicom", ".dic",
                              ".ima"})


def piped_in(most: int) -> bytes:
    """What was piped to standard input, read once (``-`` given twice is the same image, whichever decoding
    thread asks first); at most ``most`` bytes and one more, so that the caller can tell a file too large. A
    terminal, where nothing is piped in, is an ``OSError``: reading would wait for ever."""
    with _READING:
        return _read_piped(most)


_READING = threading.Lock()


@functools.lru_cache(maxsize=1)
def _read_piped(most: int) -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        raise OSError("standard input is a terminal: pipe an image in (medclf-run - < scan.png)")
    return sys.stdin.buffer.read(most + 1)


def is_image_file(path: Path) -> bool:
    """An image, as picked from folders: a known extension and not a hidden file — or a DICOM file by its
    content where the name has no extension, as PACS exports name them (``IM0001``, or a UID such as
    ``1.2.840.113619.2.55.3.100``, whose last part looks like an extension)."""
    if path.name.startswith(".") or path.name == "DICOMDIR":  # DICOMDIR indexes a folder; it holds no image
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    return (suffix == "" or suffix[1:].isdigit()) and _starts_like_dicom(path)


def _starts_like_dicom(path: Path) -> bool:
    from .dicom import is_dicom

    try:
        if not path.is_file():  # a FIFO or a device would block the listing on open
            return False
        with open(path, "rb") as file:
            return is_dicom(file.read(132))
    except OSError:
        return False


def list_images(folder: str | os.PathLike[str], unlisted: list[str] | None = None) -> list[Path]:
    """Image files under a folder, recursively, in a stable order; hidden files and folders are skipped (and
    :data:`HOUSEKEEPING` folders: a NAS's thumbnails, recycle bins), and so are the heatmaps medclf writes
    (``--cam``, ``medclf explain``), should they be written among the images.
    Linked folders are followed (datasets are often assembled from links to each patient's folder), each
    real folder once; a link up to ``folder`` or above it is not, so it can neither loop nor pull a sibling
    class's images in. Sub-folders that cannot be listed (permissions, a share gone away) go to ``unlisted``,
    so that the caller can say so rather than classify the rest as if they were all."""
    found, seen = [], {*Path(folder).resolve().parents}  # what the walk must not enter again, or at all
    said = (lambda exc: unlisted.append(exc.filename)) if unlisted is not None else None
    for root, dirs, files in os.walk(folder, onerror=said, followlinks=True):
        real = Path(root).resolve()
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in HOUSEKEEPING)
        found.extend(Path(root, name) for name in sorted(files)
                     if is_image_file(Path(root, name)) and not _OVERLAY.search(name))
    return found


def expand_inputs(inputs: Iterable[str], masks: list[Path] | None = None) -> Iterator[str]:
    """Each input as given: a folder becomes its images, a glob its matches, anything else passes through.

    A path that does not exist passes through too, so the classifier reports it as a failed input in its place;
    so does a folder without a single image (a mistyped folder, a phone's HEIC photos), rather than nothing.
    A folder's segmentation masks (``x_mask.png`` beside ``x.png``, :mod:`.annotations`) are outlines, not
    images to classify, as training leaves them out: they go to ``masks`` instead (a file named is classified).
    A sub-folder that cannot be listed passes through as an input of its own, whose error says why.
    """
    for item in inputs:
        if os.path.isdir(item):
            yield from _folder_inputs(item, masks)
        elif not os.path.exists(item) and glob.has_magic(item):
            yield from _glob_inputs(item, masks)
        else:
            yield item


def _glob_inputs(pattern: str, masks: list[Path] | None) -> Iterator[str]:
    """A glob's matches: a folder among them (a class's, ``TEST/*``) as its images, as if named; a file as it
    is, unless a folder matched holds it (``**`` matches a folder, the folders in it and their files: each image
    once, and what the folder's expansion leaves out — masks, notes — stays out)."""
    matches = [os.path.normpath(match) for match in sorted(glob.glob(pattern, recursive=True))] or [pattern]
    folders = [match for match in matches if os.path.isdir(match)]
    above = {os.path.abspath(folder) for folder in folders}

    def within(path: str) -> bool:  # "." too: "./**" matches it. Its parents looked up, not every folder compared
        return any(str(parent) in above for parent in Path(os.path.abspath(path)).parents)  # (282 s: 5,000 folders)

    for match in matches:
        if not within(match):
            yield from _folder_inputs(match, masks) if match in folders else [match]


def _folder_inputs(folder: str, masks: list[Path] | None) -> Iterator[str]:
    unlisted: list[str] = []
    images = list_images(folder, unlisted)
    found = segmentation_masks(images, Path(folder))
    if masks is not None:
        masks.extend(sorted(found))
    yield from (str(path) for path in images if path not in found) if images or unlisted else [folder]  # no image
    yield from unlisted


def listed_inputs(source: str) -> list[str]:
    """The inputs a worklist names, one per line (a PACS or lab system's export, a ``find`` output): ``source`` is
    a text file, or ``-`` for standard input. Blank lines are skipped and Windows line ends taken off; a name in
    another encoding than UTF-8 is kept byte for byte. A list saved by Windows tools (a byte-order mark; UTF-16,
    as PowerShell's ``>`` writes) and ``find -print0``'s NUL-separated names are read as meant. An unreadable
    list is an OSError naming it."""
    if source == STDIN:
        data = sys.stdin.buffer.read()
    else:
        with open(source, "rb") as handle:
            data = handle.read()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = data.decode("utf-16", errors="replace")  # a name appended in another encoding: a failed input
    else:
        text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")
    lines = text.split("\0") if "\0" in text else text.split("\n")  # not splitlines(): a name may hold \f
    return [line.removesuffix("\r") for line in lines if line.strip()]


def folder_contents(folder: str | os.PathLike[str]) -> str:
    """What a folder without images holds instead, for its one-line error: ``12 .heic files``."""
    counts = Counter(Path(name).suffix.lower() or "extensionless" for _, _, files in os.walk(folder) for name in files)
    if not counts:
        return "it is empty"
    return "it holds " + ", ".join(f"{n} {suffix} file{'s' if n > 1 else ''}" for suffix, n in counts.most_common(3))
