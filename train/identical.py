"""Byte-identical files where a dataset says they differ: one image filed under two classes, or a test or
validation image that is also a training image.

Public datasets assembled from several sources carry such files: Kermany's chest films hold twins
(``person1159_virus_1944.jpeg`` = ``..._1945.jpeg``; a random split put 5 of them beside their twin), and merged
Kaggle sets repeat images across classes and across their training and test folders. Under two classes the
labels contradict each other; shared with training, a test or validation image is not unseen, and its score
reads better than the model is. A validation split medclf holds out itself is mended (:func:`twins_to_training`);
the rest is not fixed silently — which label is right, or whether a given test set should change, is the data
owner's call — but each is said once, with an example, and counted in ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .data import ImageFolder, concat
from .splits import Splits

log = logging.getLogger(__name__)

CHUNK = 1 << 20
_READ: dict[tuple[str, tuple[int, int]], str | None] = {}  # (path, (size, mtime)) → digest, for this process


def digest(path: str) -> str | None:
    """The file's BLAKE2b digest, or None where it cannot be read (said later, where it is decoded)."""
    hashed = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as file:
            while chunk := file.read(CHUNK):
                hashed.update(chunk)
    except OSError:
        return None
    return hashed.hexdigest()


def _stat(path: str) -> tuple[int, int, int, int] | None:
    """Size, times of change (ctime too: ``touch -r`` sets mtime back) and inode: what a file's remembered digest
    is keyed by."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino


def identical_files(splits: Splits) -> dict[str, int]:
    """Count (and say, with an example each) the images filed under two classes, the validation images identical
    to a training image, and the test images identical to a training or validation one (validation chose the
    model). ``splits``: the images actually used, so that unreadable files (all alike) are not counted."""
    folders = {"train": splits.train, "val": splits.val, **({"test": splits.test} if splits.test is not None else {})}
    digests = _digests(folders)
    found = {"across_classes": _across_classes(folders, digests),
             "val_in_train": _shared("validation", folders["val"], digests["val"], [folders["train"]],
                                     [digests["train"]], "training")}
    if "test" in folders:
        found["test_in_train_or_val"] = _shared("test", folders["test"], digests["test"],
                                                [folders["train"], folders["val"]], [digests["train"], digests["val"]],
                                                "training or validation")
    return found


def seen_in_training(folder: ImageFolder, train: ImageFolder, val: ImageFolder, name: str = "evaluation",
                     consequence: str = "evaluation scores count them as unseen") -> int:
    """How many of ``folder``'s images (scored by ``medclf evaluate``, or ``name``) are byte-identical to images
    the model trained on or was chosen on (its run's recorded splits, where the files are still there), said once
    with its ``consequence``."""
    digests = _digests({"data": folder, "train": train, "val": val})
    return _shared(name, folder, digests["data"], [train, val], [digests["train"], digests["val"]],
                   "this model's training or validation", consequence)


def twins_to_training(train: ImageFolder, val: ImageFolder,
                      group_of: dict[str, str] | None = None) -> tuple[ImageFolder, ImageFolder]:
    """``train`` and ``val`` with each validation image byte-identical to a training image of its class moved to
    training — with the rest of its group (``group_of``: path → patient or source) — so that validation does not
    score files the model trained on. A class keeps at least one validation image. Said in one line."""
    digests = _digests({"train": train, "val": val})
    trained = {(key, int(label)) for key, label in zip(digests["train"], train.labels) if key is not None}
    twins = {path for path, key, label in zip(val.paths, digests["val"], val.labels) if (key, int(label)) in trained}
    if group_of is not None:  # the twin's whole group goes, or the group would straddle the split
        moved_groups = {group_of[path] for path in twins}
        twins = {path for path in val.paths if group_of[path] in moved_groups}
    moving = np.array([path in twins for path in val.paths])
    for label in np.unique(val.labels):
        if moving[val.labels == label].all():  # never every validation image of a class
            moving[val.labels == label] = False
    if group_of is not None:  # and a group one of whose images stays, stays whole
        staying = {group_of[path] for path, moves in zip(val.paths, moving) if not moves}
        moving &= np.array([group_of[path] not in staying for path in val.paths])
    if not moving.any():
        return train, val
    log.warning("%d validation image(s) moved to training: byte-identical to training images of their class "
                "(e.g. %s), they would be scored as unseen", int(moving.sum()), val.paths[int(np.argmax(moving))])
    return concat(train, val.subset(np.flatnonzero(moving))), val.subset(np.flatnonzero(~moving))


def twin_groups(folder: ImageFolder, groups: np.ndarray | None) -> np.ndarray | None:
    """``groups`` (one per file; None: each file its own) with the groups of byte-identical files of one class
    joined, so that folds keep twins together (a 59-photo set's twin in the held-out fold scores 1/12 of it as
    unseen). Unchanged where there are no twins — or where they are most of the files: one placeholder repeated
    is not a patient."""
    keys = _digests({"all": folder})["all"]
    members: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, (key, label) in enumerate(zip(keys, folder.labels)):
        if key is not None:
            members[(key, int(label))].append(index)
    twins = [indices for indices in members.values() if len(indices) > 1]
    if not twins or sum(map(len, twins)) > len(folder) // 2:
        return groups
    names, index = np.unique(np.asarray(groups if groups is not None else [f"file:{path}" for path in folder.paths]),
                             return_inverse=True)
    index = index.reshape(-1)
    links = np.asarray([(index[a], index[b]) for indices in twins for a, b in zip(indices, indices[1:])]).T
    graph = coo_matrix((np.ones(links.shape[1], np.int8), (links[0], links[1])), shape=(len(names), len(names)))
    component = connected_components(graph, directed=False)[1]
    first = np.full(component.max() + 1, len(names))  # a joined group is named by its first name, sorted
    np.minimum.at(first, component, np.arange(len(names)))
    return names[first[component]][index]


def _digests(folders: dict[str, ImageFolder]) -> dict[str, list[str | None]]:
    """Each file's digest, where another file has its size (the others have no twin: not read). A file read
    once is not read again while unchanged: a run checks its split, then what it trained on, then cross-
    validation's folds, on the same files."""
    stats = {path: _stat(path) for folder in folders.values() for path in folder.paths}
    alike = Counter(stats[path][0] for folder in folders.values() for path in folder.paths  # a path twice: twins
                    if stats[path] is not None)
    to_read = [path for path, stat in stats.items()
               if stat is not None and alike[stat[0]] > 1 and (path, stat) not in _READ]
    with ThreadPoolExecutor(4) as pool:  # reading files: threads overlap the waits
        _READ.update(((path, stats[path]), key) for path, key in zip(to_read, pool.map(digest, to_read)))
    return {name: [_READ.get((path, stats[path])) for path in folder.paths] for name, folder in folders.items()}


def _across_classes(folders: dict[str, ImageFolder], digests: dict[str, list[str | None]]) -> int:
    filed: dict[str, dict[int, str]] = defaultdict(dict)  # digest → {label: a path filed under it}
    for name, folder in folders.items():
        for path, label, key in zip(folder.paths, folder.labels, digests[name]):
            if key is not None:
                filed[key].setdefault(int(label), path)
    contradicting = [as_filed for as_filed in filed.values() if len(as_filed) > 1]
    if contradicting:
        classes = folders["train"].classes
        example = " = ".join(f"{path} ({classes[label]})" for label, path in sorted(contradicting[0].items()))
        log.warning("%d image(s) are filed under two classes or more, byte for byte (e.g. %s): their labels "
                    "contradict each other", len(contradicting), example)
    return len(contradicting)


def _shared(name: str, folder: ImageFolder, digests: list[str | None], seen: list[ImageFolder],
            seen_digests: list[list[str | None]], seen_as: str, consequence: str | None = None) -> int:
    """How many of ``folder``'s images are byte-identical to one of ``seen``'s, said with an example and its
    ``consequence`` (default: ``name``'s scores count them as unseen)."""
    twins = {key: path for other, keys in zip(seen, seen_digests) for path, key in zip(other.paths, keys)
             if key is not None}
    shared = [(path, twins[key]) for path, key in zip(folder.paths, digests) if key is not None and key in twins]
    if shared:
        log.warning("%d %s image(s) are, byte for byte, %s images (e.g. %s = %s): %s", len(shared), name, seen_as,
                    *shared[0], consequence or f"{name} scores count them as unseen")
    return len(shared)
