"""Datasets larger than a run can afford: train on the sample that fits, and say so.

The default must end within its time budget on data of any size. Every training image is decoded and passed
through the frozen backbone once; on 165,000 images (TissueMNIST's size) that pass alone would outlast a
28-minute budget on a 2-core CPU, and the decoded pixels would not fit in memory. So before decoding, the run
times the decoder and the model on a few training images and keeps as many training images as one such pass
affords in ``PASS_SHARE`` of the time left (and ``MAX_DECODED_BYTES`` of memory). The largest classes are
trimmed first, so a rare class keeps every image; validation keeps at most ``MAX_VAL_IMAGES``, drawn in the
classes' proportions. The same timing sets aside the budget for scoring validation and test images at the end
(test images are decoded then, a chunk at a time, so a test set of any size needs no memory while fitting).
Every cut is a warning and is listed in ``metrics.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import keras
import numpy as np

from medclf.runtime.preprocess import Preprocess

from .budget import TimeBudget
from .data import DatasetError, ImageFolder, load_arrays
from .fit import predict
from .splits import Splits

TIMED = 64  # training images decoded and classified to measure speed
PASS_SHARE = 0.15  # of the time left: one pass of decoding + the model over the training images
MAX_DECODED_BYTES = 4 * 2**30  # decoded training pixels held in memory
MIN_TRAIN_IMAGES = 1_000  # never fewer (a tiny budget still trains on something)
MAX_VAL_IMAGES = 5_000  # enough to choose a threshold and a WiSE mix on (accuracy within ±0.7 points)
WRITING_SECONDS = 20.0  # saving model.keras and drawing the pictures, with room to spare


@dataclass(frozen=True)
class Speed:
    """Seconds per image on this machine, measured at the start of a run."""

    decode: float  # reading, decoding and resizing, all cores
    model: float  # the whole model's forward pass, in batches of TIMED


def measure_speed(folder: ImageFolder, preprocess: Preprocess, model: keras.Model, seed: int) -> Speed:
    """Time decoding ``TIMED`` random images of ``folder`` and classifying them (after a warm-up call)."""
    rng = np.random.default_rng(seed)
    sample = folder.subset(np.sort(rng.choice(len(folder), min(TIMED, len(folder)), replace=False)))
    began = time.monotonic()
    try:
        images = load_arrays(sample, preprocess, say_skipped=False)[0]  # the full pass reports bad files
    except DatasetError as exc:  # not one readable: say so now, naming one, rather than decode the rest
        raise DatasetError(f"timing the model on {len(sample)} training images drawn at random: {exc}") from None
    decode = (time.monotonic() - began) / len(images)
    predict(model, images)  # the first call of a batch shape sets up its kernels
    seconds = []
    for _ in range(2):
        began = time.monotonic()
        predict(model, images)
        seconds.append(time.monotonic() - began)
    return Speed(decode=decode, model=min(seconds) / len(images))


def affordable_images(speed: Speed, seconds_left: float, bytes_each: int, available: int | None = None) -> int:
    """How many training images one decoding + model pass over affords in ``PASS_SHARE`` of ``seconds_left``
    and ``MAX_DECODED_BYTES`` of memory (all ``available`` where they fit); at least ``MIN_TRAIN_IMAGES``.
    Rounded down to a coarse step (``STEPS``, about a quarter apart): the timing varies by a tenth between runs,
    and every other count drew another sample, decoded and cached anew each run (up to 4 GiB a run)."""
    by_time = PASS_SHARE * max(seconds_left, 0.0) / (speed.decode + speed.model)
    afforded = min(by_time, MAX_DECODED_BYTES // bytes_each)
    if available is not None and afforded >= available:  # all of them: nothing to round, nothing cut
        return available
    return max(MIN_TRAIN_IMAGES, _step_below(afforded))


STEPS = (1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.3, 8.0)  # Renard's R10 series: ten steps a decade


def _step_below(n: float) -> int:
    """The largest of ``STEPS`` times a power of ten not above ``n`` (8,000 for 8,181 and for 9,000)."""
    if n < 1:
        return 0
    decade = 10 ** int(np.floor(np.log10(n)))
    return int(max(step * decade for step in STEPS if step * decade <= n))


def trimmed(folder: ImageFolder, n: int, seed: int) -> ImageFolder:
    """``n`` images, the largest classes cut down first: every class keeps min(its size, k) images, with ``k``
    as large as ``n`` allows, drawn at random (reproducibly)."""
    counts = np.bincount(folder.labels, minlength=len(folder.classes))
    if n >= len(folder):
        return folder
    k = max(c for c in range(counts.max() + 1) if np.minimum(counts, c).sum() <= n)
    return _draw(folder, np.minimum(counts, k), seed)


def proportional(folder: ImageFolder, n: int, seed: int) -> ImageFolder:
    """``n`` images (about), each class in its share of ``folder`` and at least one of each."""
    counts = np.bincount(folder.labels, minlength=len(folder.classes))
    if n >= len(folder):
        return folder
    return _draw(folder, np.maximum(np.minimum(counts, 1), np.round(counts * n / len(folder)).astype(int)), seed)


def fit_to_budget(splits: Splits, preprocess: Preprocess, model: keras.Model, budget: TimeBudget,
                  seed: int) -> Splits:
    """``splits`` with training and validation cut to what ``budget`` affords, after reserving the time to score
    validation and test images at the end; unchanged without a budget."""
    if budget.minutes is None:
        return splits
    speed = measure_speed(splits.train, preprocess, model, seed)
    val = proportional(splits.val, MAX_VAL_IMAGES, seed)
    tested = len(splits.test) if splits.test is not None else 0  # decoded after fitting, validation before
    budget.reserve(speed.model * len(val) + (speed.decode + speed.model) * tested + WRITING_SECONDS)
    n = affordable_images(speed, budget.left(), preprocess.height * preprocess.width * preprocess.channels,
                          available=len(splits.train))
    train = trimmed(splits.train, n, seed)
    if len(train) < len(splits.train):
        budget.cut(f"training on {len(train):,} of {len(splits.train):,} images, the largest classes trimmed: one pass "
                   f"over them takes {speed.decode + speed.model:.4f} s an image here")
    if len(val) < len(splits.val):
        budget.cut(f"validating on {len(val):,} of {len(splits.val):,} images, in the classes' proportions")
    return replace(splits, train=train, val=val)


def _draw(folder: ImageFolder, per_class: np.ndarray, seed: int) -> ImageFolder:
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(folder.labels == c))[:k] for c, k in enumerate(per_class)]
    return folder.subset(np.sort(np.concatenate(keep)))
