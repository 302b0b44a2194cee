"""Folder-per-class datasets: find the images, split them, and decode them once into cached uint8 arrays.

Decoding goes through ``medclf.runtime.preprocess`` — the very functions the runtime serves with — so a model
never sees pixels in training that differ from the pixels it gets in production.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medclf.rundir import RunDir
from medclf.runtime.atomic import atomic_write
from medclf.runtime.class_names import class_on_path, matching_class
from medclf.runtime.inputs import folder_contents, list_images
from medclf.runtime.preprocess import DECODING_VERSION, ImageError, Preprocess, read_image
from medclf.runtime.stream import decoded

from .bars import track
from .groups import group_kind, split_groups
from .labellers import Labeller, rule_recorded
from .labels_csv import CsvLabels
from .layout import (DatasetError, check_found, class_folders, find_split, is_split_name, not_a_class, not_a_folder,
                     unwrapped, unwrapped_classes, without_masks, without_nested_copies, without_outputs,
                     written_by_medclf)

log = logging.getLogger(__name__)

# A val/ folder with fewer images of some class than this (or than val_split would hold out, if fewer) is not
# used as is: Kermany's chest X-rays ship val/ with 8 images per class, on which early stopping and a
# threshold would be chosen by noise.
MIN_VAL_PER_CLASS = 20
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
    the layout says those are the classes (:func:`~.layout.class_folders`: numbered parts, finer classes).

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
    return _labelled(root, per_class, classes, "class folders")  # given: a class missing is warned of later


def _classes_on_paths(root: Path, classes: tuple[str, ...]) -> ImageFolder | None:
    """A validation or test folder whose top folders are not the classes, read by the first folder on each
    image's path named as one (C-NMC's ``fold_0/all``, LC25000's ``lung_image_sets/lung_aca``, part of
    HyperKvasir's categories), said in one line; images under none are left out, counted. None where no image
    is under a folder named as a class."""
    per_class: dict[str, list[Path]] = {}
    images = without_masks(root, {".": without_outputs(root, list_images(root))})["."]
    for path in images:
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
        if match is not None and match.casefold() != name.casefold() and files:
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
    for path in without_masks(root, {".": without_outputs(root, list_images(root))})["."]:
        label = naming.label(path.relative_to(root))
        if label is None:
            unlabelled.append(path.name)
        else:
            per_class.setdefault(label, []).append(path)
    if unlabelled:
        naming.unlabelled(root, unlabelled)
    return _labelled(root, per_class, classes, naming.kind)


def read_dataset(root: str | os.PathLike[str], classes: tuple[str, ...] | None = None,
                 naming: Labeller | None = None) -> ImageFolder:
    """Class folders, or the labels ``naming`` gives (file names, a labels file)."""
    return read_named(root, naming, classes) if naming is not None else read_folder(root, classes)


@dataclass(frozen=True)
class Splits:
    train: ImageFolder
    val: ImageFolder
    test: ImageFolder | None = None
    held_out: str = "given"  # how the validation images were chosen, for metrics.json

    def summary(self) -> str:
        """One line of what a run learns from, said before minutes of decoding and fitting, so a dataset not
        read as meant shows at once: ``2 classes (NORMAL 1,140, PNEUMONIA 3,294): 4,434 training images, ...``."""
        counts = self.train.class_counts()
        classes = (", ".join(f"{name} {n:,}" for name, n in counts.items()) if len(counts) <= 8
                   else f"{min(counts.values()):,}-{max(counts.values()):,} training images each")
        line = (f"{len(counts)} classes ({classes}): {len(self.train):,} training images, {len(self.val):,} "
                f"validation ({self.held_out})")
        return line + (f", {len(self.test):,} test" if self.test is not None else "")


def load_splits(data: str | os.PathLike[str], val_split: float = 0.15, test: str | os.PathLike[str] | None = None,
                seed: int = 0, naming: Labeller | None = None, group_pattern: str | None = None,
                group_copies: bool | None = False) -> Splits:
    """Train/validation(/test) from a folder-per-class tree, or from a folder holding train/ [val/] [test/].

    Without a ``val`` folder, or with one too small to judge by (``MIN_VAL_PER_CLASS``; it then joins the
    training images, with a warning), a stratified ``val_split`` fraction of training images is held out — whole
    groups of them where files belong together (:func:`.groups.split_groups`: ``group_pattern``, ``group_copies``,
    a labels file's patients, or what the layout and the names show).
    """
    data, train_dir, train = _training_part(data, naming)
    train, listed_val, listed_test = _listed_splits(train, naming)
    val_dir = find_split(data, "val") if train_dir else None
    val = _found_split(val_dir, train.classes, naming) if val_dir is not None else listed_val
    given_val = f"{val_dir.name}/ folder" if val_dir is not None else "validation rows of the labels file"
    if val is not None and not len(val):
        log.warning("%s: unlabelled, so %.0f%% of the training images are held out instead",
                    _unlabelled(val_dir, train.classes, naming), 100 * val_split)
        val = None
    elif val is not None and _too_small(val, train, val_split):
        log.warning("%s: %d images (%s) are too few to choose a model or a threshold on; merged into training, "
                    "%.0f%% of it held out instead", val_dir or given_val, len(val),
                    ", ".join(f"{n} {name}" for name, n in val.class_counts().items()), 100 * val_split)
        train, val = concat(train, val), None
    held_out = given_val if val is not None else f"{val_split:.0%} of the images at random"
    if val is None:
        groups = split_groups(train, group_pattern, group_copies, naming)
        if groups is not None:
            held_out = f"{val_split:.0%} of the images, whole {group_kind(groups)} at a time"
        train, val = _apart_from_twins(*stratified_split(train, val_split, seed, groups), groups, train)
    test_dir = test if test is not None else (find_split(data, "test") if train_dir else None)
    test_images = listed_test if test_dir is None else _labelled_test(test_dir, train.classes, naming,
                                                                      given=test is not None)
    return Splits(train, val, test_images, held_out)


def _listed_splits(folder: ImageFolder, naming: Labeller | None
                   ) -> tuple[ImageFolder, ImageFolder | None, ImageFolder | None]:
    """``folder`` as the labels file splits it (a split column; MedMNIST's AutoML Vision list): its training
    rows and those it puts in no split, then its validation and test rows (None where it lists none); all of
    ``folder`` for training where the file says no split. Said in one line."""
    if not isinstance(naming, CsvLabels) or naming.splits is None:
        return folder, None, None
    said = np.asarray([naming.split(Path(path)) or "train" for path in folder.paths])
    parts = {name: folder.subset(np.flatnonzero(said == name)) for name in ("train", "val", "test")}
    log.warning("%s: splits its images itself (%s): each is used as its split", naming.source.name,
                ", ".join(f"{len(part):,} {name}" for name, part in parts.items()))
    return parts["train"], parts["val"] if len(parts["val"]) else None, parts["test"] if len(parts["test"]) else None


def _training_part(data: str | os.PathLike[str], naming: Labeller | None) -> tuple[Path, Path | None, ImageFolder]:
    """The dataset's folder (:func:`~.layout.unwrapped`), its ``train/`` if it is split, and the training images."""
    data = unwrapped(data)
    train_dir = find_split(data, "train")
    return data, train_dir, _training_images(train_dir or data, naming)


def _training_images(root: Path, naming: Labeller | None) -> ImageFolder:
    """The images of ``root`` (a dataset, or its ``train/``), refusing a split folder read as a class."""
    train = read_dataset(root, naming=naming)
    splits = [name for name in train.classes if is_split_name(name, ("val", "test"))]
    if splits and naming is None:  # DATA/NORMAL, DATA/PNEUMONIA and DATA/test: "test" would be a third class
        raise DatasetError(f"{root / splits[0]} looks like a split, not a class: put the class folders in "
                           f"{root / 'train'} beside it, or pass --test {root / splits[0]}")
    return train


def pooled_for_folds(data: str | os.PathLike[str], naming: Labeller | None = None) -> ImageFolder:
    """Every image cross-validation may fold: a dataset's, or a pre-split one's ``train/`` and ``val/`` pooled
    — its ``test/`` is left out, said, so that it stays unseen (the folds read ``train`` and ``test`` as two
    classes before)."""
    data, train_dir, folder = _training_part(data, naming)
    if train_dir is None:
        train, val, test = _listed_splits(folder, naming)
        if test is not None:
            log.warning("%s: its %d test rows are left out of the folds, so that they stay unseen",
                        naming.source.name, len(test))
        return concat(train, val) if val is not None else train
    if (val_dir := find_split(data, "val")) is not None:
        val = _found_split(val_dir, folder.classes, naming)
        if len(val):
            folder = concat(folder, val)
        else:
            log.warning("%s: unlabelled, so not folded", _unlabelled(val_dir, folder.classes, naming))
    if (test_dir := find_split(data, "test")) is not None:
        log.warning("%s: left out of the folds, so that it stays unseen (score the fold models on it with medclf "
                    "evaluate)", test_dir)
    return folder


def _labelled_test(folder: Path | None, classes: tuple[str, ...], naming: Labeller | None,
                   given: bool) -> ImageFolder | None:
    """The test split, or None where a ``test/`` found beside ``train/`` holds no labelled image: competitions
    ship their test images loose, unlabelled (Kaggle's dogs vs cats ``test1/``) — said, not scored. A test
    folder the user named must hold some: refused before training rather than after it."""
    if folder is None:
        return None
    test = read_dataset(folder, classes, naming) if given else _found_split(folder, classes, naming)
    if len(test):
        return test
    if given:
        raise DatasetError(_unlabelled(folder, classes, naming))
    log.warning("%s: unlabelled, so not a test set (classify its images with medclf-run)",
                _unlabelled(folder, classes, naming))
    return None


def _found_split(folder: Path, classes: tuple[str, ...], naming: Labeller | None) -> ImageFolder:
    """A ``val/`` or ``test/`` found beside ``train/``, read by the training classes; empty where it holds no
    folder named as one of them — its images are labelled otherwise or not at all (C-NMC's ``validation_data/``
    holds one folder of loose images beside a sheet), which is said, not an error about unknown classes."""
    folders = [d.name for d in folder.iterdir() if d.is_dir() and not not_a_class(d.name)]
    named = {name.casefold() for name in classes}  # named as one, if ambiguously (Normal, NORMAL): refused later
    if naming is None and not any(matching_class(name, classes) is not None or name.casefold() in named
                                  for name in folders):
        return ImageFolder((), np.zeros(0, dtype=np.int64), classes)
    return read_dataset(folder, classes, naming)


def read_labelled(root: str | os.PathLike[str], classes: tuple[str, ...], naming: Labeller | None = None,
                  run: RunDir | None = None) -> ImageFolder:
    """:func:`read_dataset` for data to score against ``classes`` (a test set, ``medclf evaluate``'s DATA):
    refuses a folder holding no labelled image, saying what it holds instead. A labels file that splits its
    rows gives its test rows (training's rows would be scored as unseen). Where nothing says how and no class
    folders do, the images are labelled by the rule the model's ``run`` labelled its own by (file names, the
    folders holding them), said in one line: a model trained with ``--name-labels`` is scored without it."""
    rule = rule_recorded(run.metrics.get("training", {}).get("labelled_by")) if run and naming is None else None
    try:
        folder = read_dataset(root, classes, naming)
    except DatasetError:
        if rule is None:
            raise
        folder = None
    if rule is not None and (folder is None or not len(folder)):
        log.warning("%s: no class folders; labelled by %s, as this model's training images were", root, rule.kind)
        folder, naming = read_dataset(root, classes, rule), rule
    listed_test = _listed_splits(folder, naming)[2]
    folder = listed_test if listed_test is not None else folder
    if not len(folder):
        raise DatasetError(_unlabelled(Path(root), classes, naming))
    return folder


def _unlabelled(root: Path, classes: tuple[str, ...], naming: Labeller | None) -> str:
    where = f"class folders named as the training classes ({', '.join(classes)})" if naming is None else naming.kind
    return f"{root}: no image in {where}; {folder_contents(root)}"


def _apart_from_twins(train: ImageFolder, val: ImageFolder, groups: np.ndarray | None,
                      split: ImageFolder) -> tuple[ImageFolder, ImageFolder]:
    """A held-out split without validation images whose byte-identical twin trains (:mod:`.identical`)."""
    from .identical import twins_to_training

    return twins_to_training(train, val, dict(zip(split.paths, groups)) if groups is not None else None)


def recorded_split(run: RunDir, name: str) -> ImageFolder:
    """A split (``train``, ``val``, ``test``) as ``run`` recorded it, with the run's labels."""
    paths, labels = run.split(name)
    return ImageFolder(tuple(paths), np.asarray(labels, dtype=np.int64), run.labels)


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


def warn_missing_classes(labels: np.ndarray, classes: tuple[str, ...], split: str) -> list[str]:
    """Warn (and return) the classes with no readable image in ``split``: a split holds at least one file of
    every class, but that file may turn out unreadable, leaving the class's metrics there empty."""
    missing = [name for i, name in enumerate(classes) if not (labels == i).any()]
    if missing:
        log.warning("%s holds no readable image of %s: the model is not checked on %s there",
                    split, ", ".join(missing), "it" if len(missing) == 1 else "them")
    return missing


def _too_small(val: ImageFolder, train: ImageFolder, val_split: float) -> bool:
    """Some class has fewer validation images than MIN_VAL_PER_CLASS, or than ``val_split`` would hold out."""
    have = val.class_counts()
    return any(have[name] < min(MIN_VAL_PER_CLASS, int(val_split * n)) for name, n in train.class_counts().items())


def concat(a: ImageFolder, b: ImageFolder) -> ImageFolder:
    """``a``'s images followed by ``b``'s (same classes)."""
    return ImageFolder(a.paths + b.paths, np.concatenate([a.labels, b.labels]), a.classes)


def stratified_split(folder: ImageFolder, fraction: float, seed: int,
                     groups: np.ndarray | None = None) -> tuple[ImageFolder, ImageFolder]:
    """Hold out ``fraction`` of each class (at least one image per class); with ``groups`` (one per file), whole
    groups (patients, source cells) go to one side, fraction and class balance kept as nearly as groups allow."""
    if not 0.0 < fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {fraction}")
    counts = np.bincount(folder.labels)
    if counts.min() < 2:
        small = [folder.classes[i] for i in np.flatnonzero(counts < 2)]
        raise DatasetError(f"classes {small} have fewer than 2 images: cannot hold any out for validation")
    if groups is not None:
        return _grouped_split(folder, fraction, seed, groups)
    n_val = max(int(round(fraction * len(folder))), len(folder.classes))
    keep, held = train_test_split(np.arange(len(folder)), test_size=n_val, stratify=folder.labels,
                                  random_state=seed)
    missing = np.setdiff1d(np.unique(folder.labels), folder.labels[held])
    if len(missing):  # sklearn's proportional rounding can leave a rare class (500:2) out of validation entirely
        rng = np.random.default_rng(seed)
        moved = np.array([rng.choice(keep[folder.labels[keep] == label]) for label in missing])
        keep, held = np.setdiff1d(keep, moved), np.concatenate([held, moved])
    return folder.subset(np.sort(keep)), folder.subset(np.sort(held))


def _grouped_split(folder: ImageFolder, fraction: float, seed: int,
                   groups: np.ndarray) -> tuple[ImageFolder, ImageFolder]:
    folds = max(2, round(1 / fraction))
    if len(np.unique(groups)) < folds:
        raise DatasetError(f"the files form only {len(np.unique(groups))} groups (patients, sources): too few "
                           f"to hold out {fraction:.0%} of them")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    held = np.zeros(len(folder), dtype=bool)
    with warnings.catch_warnings():  # "the least populated class has only N members": seen to below
        warnings.simplefilter("ignore", UserWarning)
        held[next(splitter.split(np.zeros(len(folder)), folder.labels, groups))[1]] = True
    held = _every_class_on_both_sides(folder.labels, groups, held)
    return folder.subset(np.flatnonzero(~held)), folder.subset(np.flatnonzero(held))


def _every_class_on_both_sides(labels: np.ndarray, groups: np.ndarray, held: np.ndarray) -> np.ndarray:
    """``held`` (True: validation) with whole groups moved so that every class is trained on, and validated on
    where it has two or more groups. StratifiedGroupKFold balances classes only as far as groups allow: a rare
    class of a few groups (three copies of one cell, two patients) can land wholly on one side — never learnt,
    or never checked (a binary run then had no threshold to choose, after all its training)."""
    held = held.copy()
    for label in np.unique(labels):
        members = labels == label
        names, sizes = np.unique(groups[members], return_counts=True)
        smallest = names[np.argmin(sizes)]
        if held[members].all():  # never learnt: all its groups but the smallest train (that one too if alone)
            held[np.isin(groups, names[names != smallest] if len(names) > 1 else names)] = False
        elif not held[members].any() and len(names) > 1:  # never checked: its smallest group is validated
            held[groups == smallest] = True
    return held


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
    if len(indices) < len(folder):
        images = images[indices]
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
        with atomic_write(cache, "wb") as handle:
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
    """A file named by everything the arrays depend on: paths, sizes, mtimes, the preprocessing and the decoders'
    behaviour (``DECODING_VERSION``)."""
    if cache_dir is None:
        return None
    digest = hashlib.sha256(f"{DECODING_VERSION}\0{preprocess.to_json()}".encode())
    for path in folder.paths:
        try:
            stat = os.stat(path)
            state = f"\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:  # gone since it was listed, a broken link: decoding reports it; the key notes it missing
            state = "\0missing\n"
        digest.update(os.fsencode(os.path.abspath(path)) + state.encode())
    return Path(cache_dir) / f"images-{digest.hexdigest()[:24]}.npz"
