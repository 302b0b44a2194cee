"""Folder-per-class datasets: find the images and their labels, and decode them once into cached uint8 arrays
(which of them train, validate and test is :mod:`.splits`' to say).

Decoding goes through ``medclf.runtime.preprocess`` — the very functions the runtime serves with — so a model
never sees pixels in training that differ from the pixels it gets in production.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medclf.runtime.atomic import atomic_write
from medclf.runtime.class_names import class_on_path, folded, matching_class
from medclf.runtime.dicom import optional_decoders
from medclf.runtime.inputs import list_images
from medclf.runtime.preprocess import DECODING_VERSION, ImageError, Preprocess, read_image
from medclf.runtime.stream import decoded

from .bars import track
from .labellers import Labeller
from .layout import (DatasetError, check_found, class_folders, is_split_name, not_a_class, not_a_folder,
                     unwrapped_classes, without_masks, without_nested_copies, without_outputs, written_by_medclf)

log = logging.getLogger(__name__)

SCORING_CHUNK = 2048  # images decoded at a time when only their predictions are kept


@dataclass(frozen=True)
class ImageFolder:
    """File paths with integer labels indexing ``classes``."""

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> "ImageFolder":
        return ImageFolder(tuple(self.paths[i] for i in indices), self.labels[indices], self.classes)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}


def read_folder(root: str | os.PathLike[str], classes: tuple[str, ...] | None = None) -> ImageFolder:
    """One sub-folder per class, class = folder name (hidden folders ignored, images found recursively; finding
    the classes, a folder without images is not one, and is named in a warning) — or the folders below, where
    the layout says those are the classes (:func:`~.layout.class_folders`: numbered parts, patients holding
    class folders, finer classes).

    Pass ``classes`` to read a validation or test folder with the training set's label order; a class it lacks
    is allowed (a test set may miss one), a class it has and training did not is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise not_a_folder(root)
    root = unwrapped_classes(root)
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not not_a_class(d.name))
    if written := [name for name in found if written_by_medclf(root / name)]:
        log.warning("%s: written by medclf (a run, an evaluation), not a class: left out", ", ".join(
            str(root / name) for name in written))
        found = [name for name in found if name not in written]
    if classes is None:
        found = without_nested_copies(root, found)
    elif found and not any(matching_class(name, classes) or is_split_name(name) for name in found):
        if (on_paths := _classes_on_paths(root, classes)) is not None:
            return on_paths
    sources = class_folders(root, found)
    per_folder = without_masks(root, {folder: without_outputs(root, list_images(root / folder))
                                      for folders in sources.values() for folder in folders})
    per_class = {name: [path for folder in folders for path in per_folder[folder]] for name, folders in sources.items()}
    if classes is None and all(folders == [name] for name, folders in sources.items()):
        check_found(root, per_class)
    if classes is None:
        _warn_of_case_twins(root, list(per_class))
    return _labelled(root, per_class, classes, "class folders")  # given: a class missing is warned of later


def _warn_of_case_twins(root: Path, names: list[str], remedy: str = "move their images into one folder") -> None:
    """Classes whose names differ only in case, surrounding spaces or how their accents are written (``Normal``
    and ``normal``, or ``Normal `` with a trailing space;
    ``É`` composed and decomposed, as macOS writes it: :func:`~medclf.runtime.class_names.folded`): most likely
    one class filed twice, which trains as two that split its images between them (and is one folder on a
    Windows or macOS disk)."""
    spellings: dict[str, list[str]] = {}
    for name in names:
        spellings.setdefault(folded(name).strip(), []).append(name)  # "Normal " beside "Normal" prints alike
    for twins in (found for found in spellings.values() if len(found) > 1):
        shown = " and ".join(ascii(twin) if not twin.isascii() or twin != twin.strip() else twin  # é and é differ
                             for twin in twins)
        log.warning("%s: classes %s differ only in case or accents and are trained as %d classes: if they are "
                    "one, %s", root, shown, len(twins), remedy)


def _classes_on_paths(root: Path, classes: tuple[str, ...]) -> ImageFolder | None:
    """A validation or test folder whose top folders are not the classes, read by the first folder on each
    image's path named as one (C-NMC's ``fold_0/all``, LC25000's ``lung_image_sets/lung_aca``, part of
    HyperKvasir's categories), said in one line; images under none are left out, counted. None where no image
    is under a folder named as a class."""
    per_class: dict[str, list[Path]] = {}
    for path in _images_under(root):
        label = class_on_path(path.parent.relative_to(root).as_posix(), classes)
        per_class.setdefault(label, []).append(path)
    unlabelled = per_class.pop(None, [])
    if not per_class:
        return None
    log.warning("%s: no folder here is a training class: each image labelled by the first folder on its path "
                "named as one%s", root, f"; {len(unlabelled)} under none left out (e.g. "
                f"{unlabelled[0].relative_to(root)})" if unlabelled else "")
    return _labelled(root, per_class, classes, "class folders")


def _labelled(root: Path, per_class: dict[str, list[Path]], classes: tuple[str, ...] | None,
              kind: str) -> ImageFolder:
    """Files grouped by class name → an ImageFolder in ``classes`` order (default: the names found, sorted)."""
    found = sorted(name for name, files in per_class.items() if files)
    if classes is None:
        classes = tuple(found)
        if len(classes) < 2:
            raise DatasetError(f"{root}: need at least 2 {kind} with images, found {len(classes)}")
    else:
        per_class = _named_as(root, per_class, classes)
        found = sorted(name for name, files in per_class.items() if files)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        splits = [name for name in unknown if is_split_name(name)]
        hint = f" ({root / splits[0]} is a split: point at it)" if splits else ""
        raise DatasetError(f"{root}: classes {unknown} are not among the training classes {list(classes)}{hint}")
    paths, labels = [], []
    for index, name in enumerate(classes):
        for path in per_class.get(name, []):
            paths.append(str(path))
            labels.append(index)
    return ImageFolder(tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes))


def _named_as(root: Path, per_class: dict[str, list[Path]], classes: tuple[str, ...]) -> dict[str, list[Path]]:
    """``per_class`` with each name renamed to the one of ``classes`` it stands for
    (:func:`~medclf.runtime.class_names.matching_class`)."""
    renamed: dict[str, list[Path]] = {}
    for name, files in per_class.items():
        match = matching_class(name, classes)
        if match is not None and folded(match) != folded(name) and files:
            log.warning("%s: read as class %s, the one training class whose name begins like it", root / name, match)
        renamed.setdefault(match or name, []).extend(files)
    return renamed


def read_named(root: str | os.PathLike[str], naming: Labeller,
               classes: tuple[str, ...] | None = None) -> ImageFolder:
    """Every image under ``root``, labelled by its file name (``NameLabels``: names without a label part are
    an error), by a labels file (``CsvLabels``: images it does not list are left out, with a warning) or by the
    folder holding it (``FolderLabels``)."""
    root = Path(root)
    if not root.is_dir():
        raise not_a_folder(root)
    per_class: dict[str, list[Path]] = {}
    unlabelled = []
    for path in _images_under(root):
        label = naming.label(path.relative_to(root))
        if label is None:
            unlabelled.append(path.name)
        else:
            per_class.setdefault(label, []).append(path)
    if unlabelled:
        naming.unlabelled(root, unlabelled)
    _warn_of_case_twins(root, list(per_class), "spell them alike")
    return _labelled(root, per_class, classes, naming.kind)


def _images_under(root: Path) -> list[Path]:
    """Every image below ``root``, at any depth, but segmentation masks and what medclf wrote there."""
    return without_masks(root, {".": without_outputs(root, list_images(root))})["."]


def read_dataset(root: str | os.PathLike[str], classes: tuple[str, ...] | None = None,
                 naming: Labeller | None = None) -> ImageFolder:
    """Class folders, or the labels ``naming`` gives (file names, a labels file)."""
    return read_named(root, naming, classes) if naming is not None else read_folder(root, classes)


def shorter_side(paths: tuple[str, ...], sample: int = 16) -> float | None:
    """The median shorter side, in pixels, of up to ``sample`` images spread over ``paths`` (None if none of
    them can be read): how much detail the dataset's images carry, which decides the default input size."""
    sides = []
    for i in np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int)):
        try:
            sides.append(min(read_image(paths[i]).shape[:2]))
        except ImageError:
            continue  # said when the images are decoded for training
    return float(np.median(sides)) if sides else None


def concat(a: ImageFolder, b: ImageFolder) -> ImageFolder:
    """``a``'s images followed by ``b``'s (same classes)."""
    return ImageFolder(a.paths + b.paths, np.concatenate([a.labels, b.labels]), a.classes)


def load_arrays(folder: ImageFolder, preprocess: Preprocess, cache_dir: str | os.PathLike[str] | None = None,
                workers: int | None = None, say_skipped: bool = True) -> tuple[np.ndarray, np.ndarray, ImageFolder]:
    """Decode and resize every image once (cached on disk), returning ``(images, labels, kept)``.

    Unreadable files are left out and, with ``say_skipped``, reported on stderr one line each (a timing sample
    says nothing: the full pass reports them); ``kept`` lists the files used.
    """
    cache = _cache_path(folder, preprocess, cache_dir)
    if (saved := _read_cache(cache)) is not None:
        images, indices, errors = saved
        if say_skipped:  # said again: the files are still unusable
            _say_skipped(errors)
        kept = folder.subset(indices)
        return images, kept.labels, kept
    images = np.empty((len(folder), *preprocess.shape), np.uint8)  # filled in place: no second copy to stack
    readable, errors = np.zeros(len(folder), bool), []
    stream = decoded(folder.paths, preprocess, workers)  # the runtime's own decoding threads, reading ahead
    for i, (path, image, reason) in enumerate(track(stream, f"decoding {len(folder)} images", total=len(folder))):
        if reason is not None:
            errors.append(f"{path}: {reason}")
        else:
            images[i], readable[i] = image, True
    if say_skipped:
        _say_skipped(errors)
    indices = np.flatnonzero(readable)
    if len(indices) == 0:
        first = f" (the first, {errors[0]})" if errors else ""
        raise DatasetError(f"none of the {len(folder)} images could be read{first}")
    if len(indices) < len(folder):  # the readable ones moved up in place: a copy would double the peak
        for row, index in enumerate(indices):
            images[row] = images[index]
        images = images[:len(indices)]
    _write_cache(cache, images, indices, errors)
    kept = folder.subset(indices)
    return images, kept.labels, kept


def _read_cache(cache: Path | None) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """The cached arrays, or None: no cache, or one that cannot be read (it is then made again)."""
    if cache is None or not cache.is_file():
        return None
    try:
        with np.load(cache) as saved:
            return saved["images"], saved["indices"], list(saved["errors"]) if "errors" in saved else []
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("%s: unreadable cache of decoded images (%s); decoding again", cache, exc)
        return None


def _write_cache(cache: Path | None, images: np.ndarray, indices: np.ndarray, errors: list[str]) -> None:
    """Best effort: a cache folder that cannot be written, or a full disk, costs the next run a decode, not
    this run its work."""
    if cache is None:
        return
    try:
        with atomic_write(cache, "wb", durable=False) as handle:  # a cache: a power cut costs a decode
            np.savez(handle, images=images, indices=indices, errors=np.array(errors, dtype=str))
    except OSError as exc:
        log.warning("could not cache the decoded images in %s (%s); the next run decodes them again",
                    cache.parent, exc.strerror or exc)


def predict_folder(folder: ImageFolder, preprocess: Preprocess, predict: Callable[[np.ndarray], np.ndarray],
                   cache_dir: str | os.PathLike[str] | None = None,
                   chunk: int = SCORING_CHUNK) -> tuple[np.ndarray, np.ndarray, ImageFolder]:
    """``(labels, predict(images), kept)`` for every readable image of ``folder``, decoded ``chunk`` images at a
    time: scoring needs each image once, so a test set of any size is scored in bounded memory."""
    labels, outputs, paths = [], [], []
    for start in range(0, len(folder), chunk):
        part = folder.subset(np.arange(start, min(start + chunk, len(folder))))
        try:
            images, part_labels, kept = load_arrays(part, preprocess, cache_dir)
        except DatasetError:  # a chunk of unreadable files: each was reported on its own line
            continue
        labels.append(part_labels)
        outputs.append(predict(images))
        paths.extend(kept.paths)
    if not labels:
        raise DatasetError(f"none of the {len(folder)} images could be read (each is named above)")
    labels = np.concatenate(labels)
    return labels, np.concatenate(outputs), ImageFolder(tuple(paths), labels, folder.classes)


def _say_skipped(errors: Iterable[str]) -> None:
    """One stderr line per unusable file ("PATH: reason"), whether it was just decoded or found so before."""
    for error in errors:
        print(f"skipping {error}", file=sys.stderr)


def _cache_path(folder: ImageFolder, preprocess: Preprocess, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """A file named by everything the arrays depend on: paths, sizes, times of change (ctime too: a file
    replaced by one of its size whose mtime was set back, as ``cp -p`` and ``touch -r`` do, is not the same
    file), the preprocessing, the decoders'
    behaviour (``DECODING_VERSION``) and which optional ones are installed (a DICOM skipped for want of pydicom
    is read once it is there)."""
    if cache_dir is None:
        return None
    digest = hashlib.sha256(f"{DECODING_VERSION}\0{preprocess.to_json()}\0{optional_decoders()}".encode())
    for path in folder.paths:
        try:
            stat = os.stat(path)
            state = f"\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_ino}\n"
        except OSError:  # gone since it was listed, a broken link: decoding reports it; the key notes it missing
            state = "\0missing\n"
        digest.update(os.fsencode(os.path.abspath(path)) + state.encode())
    return Path(cache_dir) / f"images-{digest.hexdigest()[:24]}.npz"
