"""``medclf augment``: the seed tutorials' offline augmentation, for users who want augmented files on disk.

``medclf train`` augments in its input pipeline and never needs this; it exists so a folder of augmented copies
can be inspected, shared or fed to other tools. The transforms are training's own (``fit.make_augmenter``), on
the full-resolution decoded image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from medclf.runtime.annotations import dataset_masks, masks_said
from medclf.runtime.atomic import fitted_name, write_image, write_json
from medclf.runtime.inputs import list_images
from medclf.runtime.preprocess import ImageError, read_image

from .fit import make_augmenter
from .labels_csv import AUGMENTED_COPY, LabelsError, SplitsError, read_labels_csv, sheet_beside
from .layout import find_split, is_split_name, unwrapped
from .splits import split_below_class

log = logging.getLogger(__name__)

WRITABLE = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}  # other formats are written as PNG


@dataclass(frozen=True)
class Augmented:
    source: str
    written: tuple[Path, ...] = ()
    error: str | None = None


def augment_folder(data: str | os.PathLike[str], out: str | os.PathLike[str], copies: int,
                   seed: int = 0, policy: str = "default", labels: str | None = None) -> Iterator[Augmented]:
    """For every image under ``data``, write ``copies`` augmented versions to the same relative folder under
    ``out`` as ``<name>.aug<k><ext>`` (:func:`_copy_name`); unreadable files are reported and skipped. ``labels``:
    a sheet elsewhere that splits them (``--labels``), whose validation and test rows are left out. What is
    wrong with the arguments is raised here, before the first image (the copies come from the iterator)."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: not a folder")
    augmenter = make_augmenter(seed, policy)
    images = _training_images(data, out, labels)
    masks = dataset_masks(images, data)
    if masks:
        log.warning("%s", masks_said(masks, data, "not augmented"))
    made = [path for path in images if AUGMENTED_COPY.search(path.stem)]
    if made:  # --out DATA run again: copies of copies, more each time
        log.warning("%d images are copies medclf augment wrote (name.augN): not augmented again", len(made))
    return _augmented([path for path in images if path not in masks and path not in made], data, out, copies,
                      augmenter)


def _record(data: Path, out: Path) -> Path:
    """Where OUT lists the copies augmenting ``data`` wrote there (hidden: not an image, not a class), one
    record per DATA, so that a folder pooling several datasets' copies keeps each one's. A DATA inside OUT (or
    OUT itself: copies written in place) is named by where it lies in OUT, so the record still finds it once the
    whole folder is moved or renamed."""
    where = data.resolve()
    return _listed_under(out, where.relative_to(out.resolve()).as_posix() if where.is_relative_to(out.resolve())
                         else str(where))


def _legacy_record(data: Path, out: Path) -> Path:
    """Where medclf before 2026-12-07 listed them: by DATA's absolute path alone (read once, then replaced)."""
    return _listed_under(out, str(data.resolve()))


def _listed_under(out: Path, key: str) -> Path:
    return out / f".medclf-augment-{hashlib.sha256(os.fsencode(key)).hexdigest()[:12]}.json"


def _augmented(images: list[Path], data: Path, out: Path, copies: int, augmenter) -> Iterator[Augmented]:
    """The copies, image by image; once all are written, the copies an earlier run from the same DATA left in
    ``out`` that this one did not write again go (said): of images no longer in ``data`` — one removed as
    mislabelled was still trained on through them — or beyond ``copies``."""
    record, legacy = _record(data, out), _legacy_record(data, out)
    earlier = set()
    for listed in (record, legacy):
        try:
            earlier |= {out / name for name in json.loads(listed.read_text())}
        except (OSError, ValueError, TypeError):  # the first run from this DATA (or one before records)
            pass
    planned = {path: tuple(out / path.parent.relative_to(data) / _copy_name(path, k) for k in range(copies))
               for path in images}
    # listed before the first copy is written: a run stopped midway leaves its copies on the record, which the
    # next run then removes where it does not write them again (they were trained on, unlisted)
    write_json(record, sorted(str(path.relative_to(out)) for path in earlier.union(*planned.values())))
    wrote: list[Path] = []
    for path in images:
        try:
            image = read_image(path)
        except ImageError as exc:
            yield Augmented(str(path), error=exc.reason)
            continue
        batch = tf.cast(np.repeat(image[None], copies, axis=0), tf.float32)
        views = np.clip(np.rint(augmenter(batch, training=True).numpy()), 0, 255).astype(np.uint8)
        written = planned[path]
        for destination, view in zip(written, views):
            write_image(destination, cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
        wrote.extend(written)
        yield Augmented(str(path), written)
    stale = sorted(earlier - set(wrote))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d copies an earlier medclf augment of %s wrote in %s that this run did not write "
                    "again (e.g. %s): of images no longer there, or beyond --copies", len(stale), data, out,
                    stale[0].relative_to(out))
    write_json(record, sorted(str(path.relative_to(out)) for path in wrote))
    if legacy != record:
        legacy.unlink(missing_ok=True)  # taken over


def _training_images(data: Path, out: Path, labels: str | None = None) -> list[Path]:
    """What to augment: the images training would train on, said — augmented validation or test images would
    judge a model on altered copies (blood-cells TEST is ~25 copies of each of 100 cells: 100 cells, not 2,487
    images). A pre-split dataset's ``train/`` alone (found inside the folder of its archive's name, as training
    finds it: :func:`~.layout.unwrapped`); beside class folders, no ``val/`` or ``test/``; of images a sheet
    beside them labels and splits (MedMNIST's ``save``), its training rows — the copies take their source's row
    when that sheet labels their folder."""
    split = unwrapped(data)
    train = find_split(split, "train")
    others = sorted(d for d in split.iterdir() if d.is_dir() and d != train and is_split_name(d.name))
    if others:
        kept = f"only {train.name}/ is augmented (into {out / train.relative_to(data)})" if train else \
            "the class folders are augmented"
        log.warning("%s: %s; %s left out: a model is judged on real images", split, kept,
                    ", ".join(f"{d.name}/" for d in others))
    images = list_images(train) if train is not None else [
        path for path in list_images(data) if not any(path.is_relative_to(other) for other in others)]
    images = _class_first_training(split if train is None else train, images)
    try:
        sheet = read_labels_csv(labels) if labels is not None else sheet_beside(data)
    except SplitsError:  # splits it cannot follow: its test rows cannot be left out
        raise
    except LabelsError:  # a sheet of that name that labels nothing (sizes, sites): nothing to follow
        if labels is not None:
            raise
        sheet = None
    if sheet is not None and sheet.splits:
        held = {path for path in images if sheet.split(path) in ("val", "test")}
        if held:
            log.warning("%s: its %d validation and test rows are left out: a model is judged on real images",
                        sheet.source.name, len(held))
            images = [path for path in images if path not in held]
    return images


def _class_first_training(root: Path, images: list[Path]) -> list[Path]:
    """``images`` in the training folders of class folders that split themselves (``NORMAL/{Train,Test}``), as
    training reads them (:func:`~.splits.split_below_class`); all of them where the class folders do not."""
    said = [split_below_class(str(path), path.relative_to(root).parts[0]) if path.parent != root else None
            for path in images]
    if "train" not in said or None in said:
        return images
    held = sorted({name for name in said if name != "train"})
    log.warning("%s: every class folder is split itself: its training folders alone are augmented, %s left out: "
                "a model is judged on real images", root, " and ".join(held) or "nothing")
    return [path for path, name in zip(images, said) if name == "train"]


def _copy_name(path: Path, k: int) -> str:
    """``scan.aug0.jpg`` for ``scan.jpg``, in the file's own format where it is writable, its suffix's case kept
    (``scan.JPG`` beside ``scan.jpg`` stays apart); PNG otherwise, after the whole name (``scan.webp.aug0.png``)
    so that ``scan.webp`` beside ``scan.png`` stays apart too."""
    if path.suffix.lower() in WRITABLE:
        return fitted_name(path.stem, f".aug{k}{path.suffix}")
    return fitted_name(path.name, f".aug{k}.png")
