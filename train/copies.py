"""Find augmented copies of one source image, so a validation split cannot hold copies of training images.

Many public medical datasets ship pre-augmented: blood-cells/TRAIN is ~33 rotated, flipped and shifted copies
of each of ~400 source cells. Copies on both sides of a split make validation measure memory (99.9% there
against 86% on unseen cells). A colour histogram does not change under rotation, flips or small shifts, so
images of one class whose histograms nearly coincide are treated as one source: linked pairs form groups.

Measured on blood-cells/TRAIN/EOSINOPHIL (2,497 images): at the default distance, 99 groups, median 33 images,
largest 34 — the dataset's copies per source (checked by eye: one group's images are one cell, turned).

Left to itself (``--group-copies`` not given), training looks for copies and uses them only when the data looks
shipped pre-augmented: enough images have a copy, and no group is so large that it must be look-alikes chained
together rather than copies — grey radiographs, whose histograms have only a brightness axis, chain that way
(chest-xray/train: one "group" of 73% of the films), so a class of grey images is not grouped by colour at
all. The search stops as soon as one group passes that size, and compares images a block at a time, so it
stays within memory on large look-alike datasets; on large datasets a random sample is searched first, so data
without copies costs seconds whatever its size.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medclf.runtime.preprocess import ImageError, Preprocess, decode_image, jpeg_scale, read_bytes
from medclf.runtime.stream import decode_workers

from .groups import KEPT_TOGETHER

log = logging.getLogger(__name__)

COPY_DISTANCE = 0.008  # 1 - Bhattacharyya coefficient between HSV histograms; copies sit below, other cells above
_BINS = (16, 8, 8)
# A histogram needs no more than a 256-pixel short side: big JPEGs are decoded at 1/2-1/8 scale for it (a
# 2400x2000 film: ~6x faster), so looking for copies does not double the decoding of large-image datasets.
_SIGNATURE_SIZE = Preprocess(256, 256, shrink_jpeg=True)
# Automatic use: at least COPIED of the images have a copy, no group holds more than CHAINED of them, and there
# are MIN_SOURCES sources to split. blood-cells/TRAIN: 99% copied, largest group 1.6%; chest-xray/train: 99%
# "copied", largest 73% (chained); cataract: 7% (two near-duplicate photos).
COPIED, CHAINED, MIN_SOURCES = 0.10, 0.10, 20
GREY_CLASS = 0.9  # of a class's images grey: its files are not grouped by colour (see copy_groups)
# Files searched first on larger datasets (see detected_copies). A pair of copies both in a sample of fraction f
# turns up with probability f, so the sample is taken to show copies when at least COPIED x f of it has one.
LOOK_FIRST = 4_000


def colour_signature(path: str) -> np.ndarray | None:
    """Square root of the normalised HSV histogram (so a dot product is the Bhattacharyya coefficient)."""
    try:
        data = read_bytes(path)
        rgb = decode_image(data, path, "rgb", jpeg_scale(data, _SIGNATURE_SIZE))
    except ImageError:
        return None
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1, 2], None, list(_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    return np.sqrt(histogram / max(histogram.sum(), 1.0)).astype(np.float32)


def _grey(signature: np.ndarray) -> bool:
    """Whether the image a signature was taken of is grey: nearly all of it in the lowest saturation bins."""
    return float(np.square(signature.reshape(_BINS)[:, 0, :]).sum()) > 0.95


def copy_groups(paths: tuple[str, ...], labels: np.ndarray, distance: float = COPY_DISTANCE,
                most: int | None = None) -> np.ndarray | None:
    """A group id per file: files of one class whose colour signatures are within ``distance`` (directly or
    through a chain of such files) share one. Unreadable files, and the files of a class of grey images (whose
    brightness histograms chain most of them together: a class of films beside classes of cells shipped as
    copies would be one "group"), get groups of their own. With ``most``, gives up (None) as soon as a group
    holds more files than that: look-alikes chained together, not copies."""
    with ThreadPoolExecutor(decode_workers()) as pool:  # as many threads as decoding gains from (GIL)
        signatures = list(pool.map(colour_signature, paths))
    groups = np.full(len(paths), -1)
    next_id = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        readable = [i for i in members if signatures[i] is not None]
        if not readable or np.mean([_grey(signatures[i]) for i in readable]) > GREY_CLASS:
            continue  # a class of grey images: its histograms have a brightness axis alone, and chain
        ids = _components(np.stack([signatures[i] for i in readable]), distance, most)
        if ids is None:
            return None
        groups[readable] = ids + next_id
        next_id += len(readable)  # ids name a group by one of its members' positions: below len(readable)
    alone = np.flatnonzero(groups < 0)  # a grey class's files, unreadable ones: after every id given above
    groups[alone] = next_id + np.arange(len(alone))
    return groups


def detected_copies(paths: tuple[str, ...], labels: np.ndarray, seed: int = 0) -> np.ndarray | None:
    """Copy groups if the files look shipped pre-augmented (see the module docstring), else None.

    On more than ``LOOK_FIRST`` files a random sample of that many is searched first, and all of them only if
    the sample shows copies: the search decodes every file and compares every pair within a class, which on
    100,000 colour images of a class would take ~7 minutes here (3,875 take 0.6 s; pairs grow as the square),
    a quarter of the default time budget, and most datasets hold no copies."""
    if len(paths) > LOOK_FIRST:
        sample = np.sort(np.random.default_rng(seed).choice(len(paths), LOOK_FIRST, replace=False))
        groups = copy_groups(tuple(paths[i] for i in sample), labels[sample], most=int(CHAINED * LOOK_FIRST))
        if groups is None or _copied(_sizes(groups)) < COPIED * LOOK_FIRST / len(paths):  # the least copies show
            log.info("no augmented copies found among %d images sampled", LOOK_FIRST)
            return None
    groups = copy_groups(paths, labels, most=int(CHAINED * len(paths)))
    if groups is None:
        log.info("no augmented copies found (look-alike images chain into groups of over %.0f%% of the images)",
                 100 * CHAINED)
        return None
    sizes = _sizes(groups)
    copied, largest = _copied(sizes), sizes.max() / len(groups)
    if copied < COPIED or largest > CHAINED or len(sizes) < MIN_SOURCES:
        log.info("no augmented copies found (%.0f%% of images have a look-alike, the largest group holds %.0f%%)",
                 100 * copied, 100 * largest)
        return None
    log.warning("%d of %d images are augmented copies of %d sources: a source's copies are %s",
                sizes[sizes > 1].sum(), len(groups), len(sizes), KEPT_TOGETHER)
    return groups


def _sizes(groups: np.ndarray) -> np.ndarray:
    return np.unique(groups, return_counts=True)[1]


def _copied(sizes: np.ndarray) -> float:
    """The fraction of files that share their group with another, from the groups' sizes."""
    return sizes[sizes > 1].sum() / sizes.sum()


def _components(signatures: np.ndarray, distance: float, most: int | None = None,
                block: int = 512) -> np.ndarray | None:
    """Connected components of the 'within distance' graph, each named by its first member's position.

    Rows are compared a block at a time, and a block's links are cut to one per (image, group it touches), so
    memory stays bounded by the block even when look-alikes chain most images together (grey films: one pair
    in 35 is close). With ``most``, returns None once a component grows past it."""
    n = len(signatures)
    first = np.arange(n)  # each image's group, named by its first member found so far
    for start in range(0, n, block):
        rows, cols = np.nonzero(1.0 - signatures[start:start + block] @ signatures.T < distance)
        links = np.unique((rows + start) * n + first[cols])
        graph = coo_matrix((np.ones(n + len(links), np.int8),
                            (np.concatenate([np.arange(n), links // n]), np.concatenate([first, links % n]))),
                           shape=(n, n))
        ids = connected_components(graph, directed=False)[1]
        smallest = np.full(ids.max() + 1, n)
        np.minimum.at(smallest, ids, np.arange(n))
        first = smallest[ids]
        if most is not None and np.bincount(first).max() > most:
            return None
    return first
