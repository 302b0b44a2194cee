"""Which images a run trains on, chooses on and is scored on: a dataset's own ``val/`` and ``test/`` where it
ships them (or its sheet's split column), else a stratified share held out — whole patients or source images
at a time where files belong together — and cross-validation's pool.

Every split is read by :mod:`.data` (class folders, names, sheets); this module only decides who goes where,
and says so in one line where a split is not used as it was found.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medclf.rundir import RunDir
from medclf.runtime.class_names import matching_class
from medclf.runtime.inputs import folder_contents, list_images

from .data import ImageFolder, concat, read_dataset
from .groups import group_kind, split_groups
from .labellers import Labeller, rule_recorded
from .labels_csv import LISTED_SHARE, CsvLabels, most_listing
from .layout import DatasetError, find_split, is_split_name, not_a_class, split_of, unwrapped

log = logging.getLogger(__name__)


# A val/ folder with fewer images of some class than this (or than val_split would hold out, if fewer) is not
# used as is: Kermany's chest X-rays ship val/ with 8 images per class, on which early stopping and a
# threshold would be chosen by noise.
MIN_VAL_PER_CLASS = 20
# A class with fewer training images than this is named in a warning before training: transfer learning wants
# tens of images a class, and a folder of two photos (a rare finding, a stray folder) is seldom called at all.
MIN_TRAIN_PER_CLASS = 10


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
    data, train_dir, train = _training_part(data, naming, test)
    train, listed_val, listed_test = _own_splits(data, train, naming) if naming or not train_dir else (
        train, None, None)
    listed = "validation rows of the labels file" if naming else "each class folder's own validation folder"
    val_dir = find_split(data, "val") if train_dir else None
    val = _found_split(val_dir, train.classes, naming) if val_dir is not None else listed_val
    given_val = f"{val_dir.name}/ folder" if val_dir is not None else listed
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
        folds = max(2, round(1 / val_split))
        if groups is not None and group_pattern is None and not group_copies and len(np.unique(groups)) < folds:
            log.warning("%s: the %d groups found are too few to hold %.0f%% of them out whole; split image by image "
                        "(validation may share them with training)", data, len(np.unique(groups)), 100 * val_split)
            groups = None
        if groups is not None:
            held_out = f"{val_split:.0%} of the images, whole {group_kind(groups)} at a time"
        train, val = _apart_from_twins(*stratified_split(train, val_split, seed, groups), groups, train)
    test_dir = test if test is not None else (find_split(data, "test") if train_dir else None)
    test_images = listed_test if test_dir is None else _labelled_test(test_dir, train.classes, naming,
                                                                      given=test is not None)
    if isinstance(naming, CsvLabels):
        _say_not_found(naming, data, [part for part in (train, val, test_images) if part is not None])
    return Splits(train, val, test_images, held_out)


def _say_not_found(sheet: CsvLabels, data: Path, parts: list[ImageFolder]) -> None:
    """One line for the rows of ``sheet`` that name no image found (half a dataset copied, a folder missed):
    they were left out without a word."""
    missing = sheet.not_found(path for part in parts for path in part.paths)
    if missing:
        log.warning("%s: %d of its %d labelled rows name no image found in %s, left out (e.g. %s)",
                    sheet.source.name, len(missing), len(sheet.rows), data, missing[0])


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


def _own_splits(root: Path, folder: ImageFolder, naming: Labeller | None
                ) -> tuple[ImageFolder, ImageFolder | None, ImageFolder | None]:
    """The splits a dataset draws itself, where it does: its labels file's split column, or class folders that
    split themselves (:func:`_split_class_first`); else all of ``folder`` for training."""
    return _listed_splits(folder, naming) if naming else _split_class_first(root, folder)


def _split_class_first(root: Path, folder: ImageFolder
                       ) -> tuple[ImageFolder, ImageFolder | None, ImageFolder | None]:
    """``folder`` as its class folders split it themselves (``NORMAL/{Train,Val,Test}``,
    ``PNEUMONIA/{Train,Val,Test}``: pooled before, the test images trained on): its training images, then its
    validation and test ones (None where it has none) — where every image lies in a split folder directly below
    its class's and training is one; else all of ``folder`` for training. Said in one line."""
    said = np.asarray([split_below_class(path, folder.classes[label]) or ""
                       for path, label in zip(folder.paths, folder.labels)])
    if "train" not in said:
        return folder, None, None
    if "" in said:  # mostly split, some images beside the splits: no way to tell where those belong
        outside = np.flatnonzero(said == "")
        log.warning("%s: the class folders are split themselves (%s), but %d images lie outside those folders "
                    "(e.g. %s): read as one pool, their test images trained on — move them into a split folder",
                    root, ", ".join(sorted(set(said) - {""})), len(outside), folder.paths[outside[0]])
        return folder, None, None
    parts = {name: folder.subset(np.flatnonzero(said == name)) for name in ("train", "val", "test")}
    log.warning("%s: every class folder is split itself (%s): each used as its split", root,
                ", ".join(f"{len(part):,} {name}" for name, part in parts.items()))
    return parts["train"], parts["val"] if len(parts["val"]) else None, parts["test"] if len(parts["test"]) else None


def split_below_class(path: str, name: str) -> str | None:
    """The split the folder directly below ``path``'s class folder ``name`` is named as, or None."""
    parts = Path(path).parts
    below = [parts[i + 1] for i in range(len(parts) - 2) if parts[i] == name]
    return split_of(below[-1]) if below else None


def _training_part(data: str | os.PathLike[str], naming: Labeller | None,
                   test: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None, ImageFolder]:
    """The dataset's folder (:func:`~.layout.unwrapped`), its ``train/`` if it is split, and the training images
    (without the ``test`` folder, where that is one of its folders)."""
    data = unwrapped(data)
    train_dir = find_split(data, "train")
    return data, train_dir, _training_images(train_dir or data, naming, test)


def _training_images(root: Path, naming: Labeller | None, test: str | os.PathLike[str] | None = None) -> ImageFolder:
    """The images of ``root`` (a dataset, or its ``train/``), refusing a split folder read as a class — unless it
    is the ``test`` folder given, which is then no class (``DATA/{NORMAL,PNEUMONIA,test}``, ``--test DATA/test``)."""
    train = read_dataset(root, naming=naming)
    given = [name for name in train.classes if test is not None and (root / name).resolve() == Path(test).resolve()]
    if given:
        train = _without_class(train, given[0])
    splits = [name for name in train.classes if is_split_name(name, ("val", "test"))]
    if splits and naming is None:  # DATA/NORMAL, DATA/PNEUMONIA and DATA/test: "test" would be a third class
        raise DatasetError(f"{root / splits[0]} looks like a split, not a class: put the class folders in "
                           f"{root / 'train'} beside it, or pass --test {root / splits[0]} — or, where it is a "
                           "class (a QC set's valid and invalid), pass --top-folders")
    return train


def _without_class(folder: ImageFolder, name: str) -> ImageFolder:
    """``folder`` without the class ``name`` and its images, the classes after it renumbered."""
    k = folder.classes.index(name)
    keep = np.flatnonzero(folder.labels != k)
    labels = folder.labels[keep]
    return ImageFolder(tuple(folder.paths[i] for i in keep), labels - (labels > k),
                       folder.classes[:k] + folder.classes[k + 1:])


def pooled_for_folds(data: str | os.PathLike[str], naming: Labeller | None = None) -> ImageFolder:
    """Every image cross-validation may fold: a dataset's, or a pre-split one's ``train/`` and ``val/`` pooled
    — its ``test/`` is left out, said, so that it stays unseen (the folds read ``train`` and ``test`` as two
    classes before)."""
    data, train_dir, folder = _training_part(data, naming)
    if train_dir is None:
        train, val, test = _own_splits(data, folder, naming)
        if test is not None:
            log.warning("%s: its %d test images are left out of the folds, so that they stay unseen",
                        naming.source.name if naming else data, len(test))
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
    folder = Path(folder)
    images = list_images(folder) if isinstance(naming, CsvLabels) else []
    if images and not any(naming.label(path) for path in images):  # not read by the sheet: "N not listed" first
        test = _labelled_otherwise(folder, classes, naming, images)
    elif given:
        test = read_dataset(folder, classes, naming)
        if isinstance(naming, CsvLabels) and naming.splits is not None and len(test):  # its test rows alone
            test = _listed_splits(test, naming)[2] or test.subset(np.zeros(0, dtype=np.int64))
    else:
        test = _found_split(folder, classes, naming)
    if len(test):
        return test
    if given:
        raise DatasetError(_unlabelled(folder, classes, naming))
    log.warning("%s: unlabelled, so not a test set (classify its images with medclf-run)",
                _unlabelled(folder, classes, naming))
    return None


def _labelled_otherwise(folder: Path, classes: tuple[str, ...], training: CsvLabels,
                        images: list[Path]) -> ImageFolder:
    """A test folder the training sheet lists none of, labelled as it is itself: by class folders named as the
    training classes, or by a sheet of its own beside or in it (``test.csv`` beside ``test/``) that lists nearly
    all of its images — said in one line; empty where neither does. (A sheet-labelled run refused a test set in
    class folders, and called a ``test/`` with its own sheet unlabelled.)"""
    empty = ImageFolder((), np.zeros(0, dtype=np.int64), classes)
    try:
        by_folders = _found_split(folder, classes, None)
    except DatasetError:
        by_folders = empty
    if len(by_folders):
        log.warning("%s: labelled by its class folders (%s lists none of its images)", folder, training.source.name)
        return by_folders
    sheets = [sheet for place in (folder.parent, folder) for sheet in sorted(place.glob("*.csv"))
              if sheet.resolve() != training.source.resolve() and "submission" not in sheet.name.lower()]
    own, listed = most_listing(sheets, images)
    if own is None or listed < LISTED_SHARE * len(images) or len(set(own.labels.values())) < 2:
        return empty  # one label for all: a competition's answer template (sample_submission.csv), not answers
    log.warning("%s: labelled by %s, which lists its images (%s lists none of them)", folder, own.source.name,
                training.source.name)
    try:
        return read_dataset(folder, classes, own)
    except DatasetError:
        return empty


def _found_split(folder: Path, classes: tuple[str, ...], naming: Labeller | None) -> ImageFolder:
    """A ``val/`` or ``test/`` found beside ``train/``, read by the training classes — where none of its folders
    is named as one, by the folders named so further down (a category tree's ``test/upper-gi-tract/.../z-line``);
    empty where there are none — its images are labelled otherwise or not at all (C-NMC's ``validation_data/``
    holds one folder of loose images beside a sheet), which is said, not an error about unknown classes."""
    folders = [d.name for d in folder.iterdir() if d.is_dir() and not not_a_class(d.name)]
    named = {name.casefold() for name in classes}  # named as one, if ambiguously (Normal, NORMAL): refused later
    if naming is None and not any(matching_class(name, classes) is not None or name.casefold() in named
                                  for name in folders):
        try:
            return read_dataset(folder, classes)
        except DatasetError:
            return ImageFolder((), np.zeros(0, dtype=np.int64), classes)
    return read_dataset(folder, classes, naming)


def read_labelled(root: str | os.PathLike[str], classes: tuple[str, ...], naming: Labeller | None = None,
                  run: RunDir | None = None, fitting: bool = False) -> ImageFolder:
    """:func:`read_dataset` for data to score against ``classes`` (a test set, ``medclf evaluate``'s DATA):
    refuses a folder holding no labelled image, saying what it holds instead. A labels file that splits its
    rows gives its test rows (training's rows would be scored as unseen), and so do class folders that split
    themselves (``NORMAL/{Train,Test}``). Where nothing says how and no class
    folders do, the images are labelled by the rule the model's ``run`` labelled its own by (file names, the
    folders holding them), said in one line: a model trained with ``--name-labels`` is scored without it.
    ``fitting`` (``medclf calibrate``, which fits on the images): such data's training and validation rows
    instead, leaving its test rows unseen for ``medclf evaluate`` (calibrate fitted on them, using them up)."""
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
    train, val, listed_test = _own_splits(Path(root), folder, naming)
    if listed_test is not None and fitting:
        kept = set(train.paths) | set(val.paths if val is not None else ())
        folder = folder.subset(np.flatnonzero([path in kept for path in folder.paths]))
        log.warning("%s: fitted on its %d training and validation images; its %d test images are left for "
                    "medclf evaluate", root, len(folder), len(listed_test))
    elif listed_test is not None:
        folder = listed_test
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


def warn_missing_classes(labels: np.ndarray, classes: tuple[str, ...], split: str) -> list[str]:
    """Warn (and return) the classes with no readable image in ``split``: a split holds at least one file of
    every class, but that file may turn out unreadable, leaving the class's metrics there empty."""
    missing = [name for i, name in enumerate(classes) if not (labels == i).any()]
    if missing:
        log.warning("%s holds no readable image of %s: the model is not checked on %s there",
                    split, ", ".join(missing), "it" if len(missing) == 1 else "them")
    return missing


def warn_scarce_classes(train: ImageFolder) -> list[str]:
    """Warn (and return) the classes with fewer than ``MIN_TRAIN_PER_CLASS`` training images, in one line, said
    before minutes of training: their calls will be rare and their scores mean little."""
    scarce = {name: n for name, n in train.class_counts().items() if n < MIN_TRAIN_PER_CLASS}
    if scarce:
        listed = ", ".join(f"{name} ({n} training image{'s' if n != 1 else ''})" for name, n in scarce.items())
        log.warning("%s: too few to learn %s from (tens a class are needed): the model will seldom call %s and "
                    "its scores there mean little; gather more images, or leave %s out",
                    listed, "a class" if len(scarce) == 1 else "classes", "it" if len(scarce) == 1 else "them",
                    "its folder" if len(scarce) == 1 else "their folders")
    return list(scarce)


# File name endings that are one format (an extension-less file in a DICOM folder, as PACS export them, is DICOM)
SAME_FORMAT = {".jpeg": ".jpg", ".jpe": ".jpg", ".jfif": ".jpg", ".tiff": ".tif", ".dicom": ".dcm", ".dic": ".dcm",
               ".ima": ".dcm", "": ".dcm"}


def warn_formats_by_class(train: ImageFolder) -> bool:
    """Warn (and say so) where each class's images come in formats no other class's do — every NORMAL film a PNG,
    every PNEUMONIA one a DICOM, as when two archives are merged: a model can learn the files' formats (their
    decoders, depths, sizes) instead of the finding, score well on a test set made the same way, and fail on the
    first image whose format does not follow its class."""
    formats = [{SAME_FORMAT.get(Path(path).suffix.lower(), Path(path).suffix.lower())
                for path, label in zip(train.paths, train.labels) if label == i} for i in range(len(train.classes))]
    present = [(name, kinds) for name, kinds in zip(train.classes, formats) if kinds]
    if len(present) < 2 or len(set().union(*(kinds for _, kinds in present))) < sum(len(k) for _, k in present):
        return False  # one class only, or some format shared by two classes
    said = "; ".join(f"{name}: {' '.join(sorted(kinds))}" for name, kinds in present)
    log.warning("each class's images come in file formats no other class's do (%s): a model can learn to tell the "
                "formats apart instead of the finding, and call by format; convert them to one format, or check "
                "its calls on images of each class in the other formats", said)
    return True


def _too_small(val: ImageFolder, train: ImageFolder, val_split: float) -> bool:
    """Some class has fewer validation images than MIN_VAL_PER_CLASS, or than ``val_split`` would hold out."""
    have = val.class_counts()
    return any(have[name] < min(MIN_VAL_PER_CLASS, int(val_split * n)) for name, n in train.class_counts().items())


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

