"""Which files belong together — one patient's films, one source cell's augmented copies — so that a split puts
them on one side and an evaluation counts them once.

A validation image whose patient also trains measures memory of the patient, not skill (Kermany's chest films:
98.6% validation accuracy on a split drawn image by image). The user can say what belongs together (a name
pattern, a labels file's patient column, ``--group-copies``); otherwise the layout and the names are looked at,
in the order of :func:`split_groups`, and what was found is said in one line.

Every answer is one group name per file (an array); a file that belongs with no other has a group of its own.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .labels_csv import AUGMENTED_COPY
from .layout import is_part_name, numbered_alike

if TYPE_CHECKING:
    from .data import ImageFolder, Labeller

log = logging.getLogger(__name__)

MIN_NESTED = 0.5  # subfolder_groups: the share of files in sub-folders of their class folder that makes it a layout
MIN_SUBFOLDERS = 10  # and how many sub-folders there must be to hold some out (a split holds out ~1 in 7), or
MIN_NUMBERED = 7  # where they are numbered alike (patient01, p7: patients, not sub-types) as many as the split's folds
# name_groups: names are numbered within patients when at least NAMED_SHARED of the files share their name with
# another, in NAMED_GROUPS groups or more, none holding most of a class (NAMED_BULK: the same name numbered through
# a class, cat.1 ... cat.12500) or over NAMED_LARGEST of the files (NAMED_FLOOR files on small sets), which would
# unbalance the split. Kermany's chest films: 65% shared, 1,065 groups of 2-30, the largest 0.6%. A rare class of
# two patients is two groups of about half: kept. Blood-cells' _3_1169.jpeg (augmentation 3, 3% of the files)
# would pass, but copies are looked for first and found there.
NAMED_SHARED, NAMED_GROUPS, NAMED_BULK, NAMED_LARGEST, NAMED_FLOOR = 0.10, 20, 0.9, 0.05, 20
# ... or MIN_NUMBERED groups whose names hold a number (patient07_3: patient07; not arm_b01's arm_b, a body site)
# What is done with files found to belong together, said in each finding's warning line.
KEPT_TOGETHER = ("kept together, on one side of a split and one vote in a score (--no-group-copies: each image on "
                 "its own)")
_NUMBERED = re.compile(r"(.*\D)\d+")  # a name and the number it ends with
_UP_TO_A_NUMBER = re.compile(r"^(.*\d)\D*$")  # a name up to its last digit
# a name ending in the side or view an image shows: left/right eye (OD/OS), breast (L/R), mammography and chest views
_SIDE_OR_VIEW = re.compile(r"(.*?[^\W_])(?:[\W_]+(?:left|right|l|r|od|os|cc|mlo|pa|ap|lat|lateral|frontal))+",
                           re.IGNORECASE)
_LAST_WORD = re.compile(r"(.*[^\W_])[\W_]+[^\W_]+")  # a name and the word it ends with, after a separator
_SEPARATORS = frozenset("-_. ")  # what stands between the words of a file name


def split_groups(folder: ImageFolder, pattern: str | None = None, copies: bool | None = False,
                 naming: Labeller | None = None) -> np.ndarray | None:
    """Which files must stay together: augmented copies of one source (``copies``), files whose names share
    ``pattern``'s match (a patient), the patients a labels file names (``naming``, :func:`listed_groups`), or
    None (every file on its own). ``copies=None`` decides by looking, when no pattern or list is given: files
    filed in sub-folders of their class folder stay together by that sub-folder (:func:`subfolder_groups`), else
    copy groups if the files look shipped pre-augmented (``copies.detected_copies``), else files whose names
    share a patient's number (:func:`name_groups`)."""
    return with_augment_copies(_found_groups(folder, pattern, copies, naming), folder)


def _source_keys(folder: ImageFolder) -> tuple[list[tuple], list[bool]]:
    """Per file, the source it shows: itself, or for a copy ``medclf augment`` wrote the file in its folder (and
    class) it was made from — ``x.jpg`` for ``x.aug3.jpg``; ``x.webp`` for ``x.webp.aug3.png`` (a format augment
    does not write is copied as PNG after the whole name), and so for a DICOM named by its UID, whose last part
    looks like an extension. Also which files are such copies."""
    own = [(label, str(Path(path).parent), Path(path)) for path, label in zip(folder.paths, folder.labels)]
    sources = {}  # a source is itself by its whole name, and answers to its stem too (x.aug3.jpg's x)
    for label, parent, path in own:
        if AUGMENTED_COPY.search(path.stem) is None:
            sources[(label, parent, path.name)] = (label, parent, path.name)
            sources.setdefault((label, parent, path.stem), (label, parent, path.name))
    keys, copies = [], []
    for label, parent, path in own:
        base = AUGMENTED_COPY.sub("", path.stem)
        copies.append(base != path.stem)
        keys.append(sources.get((label, parent, base), (label, parent, base)) if copies[-1]
                    else (label, parent, path.name))
    return keys, copies


def _found_groups(folder: ImageFolder, pattern: str | None, copies: bool | None,
                  naming: Labeller | None) -> np.ndarray | None:
    from .copies import copy_groups, detected_copies

    if copies:
        return copy_groups(folder.paths, folder.labels)
    if pattern:
        return np.char.add("pattern:", file_groups(folder.paths, pattern))
    if (listed := listed_groups(folder, naming)) is not None:
        return listed
    if copies is not None:
        return None
    by_folders = subfolder_groups if naming is None else sheet_folder_groups  # no class folder where labels are
    for found in (source_groups, by_folders, lambda f: detected_copies(f.paths, f.labels), name_groups):
        if (groups := found(folder)) is not None:
            return groups
    return None


def with_augment_copies(groups: np.ndarray | None, folder: ImageFolder) -> np.ndarray | None:
    """``groups`` with the copies ``medclf augment`` wrote (``01.aug3.jpg``) in their source's group (``01.jpg``
    beside them, in the same class): whatever else was found, a copy on the other side of a split from its source
    is the same image scored as unseen (all 32 validation photos of an augmented cataract set had copies in
    training). Its brightness and turns hide it from the colour-histogram search, its name does not."""
    where, copies = _source_keys(folder)
    copied = {key for key, copy in zip(where, copies) if copy}
    if not copied:
        return groups
    named = [f"file:{path}" for path in folder.paths] if groups is None else [str(group) for group in groups]
    parent: dict[str, str] = {}  # groups merged: a source's copies join its whole group (a patient's other films)

    def root(group: str) -> str:
        while parent.get(group, group) != group:
            group = parent[group]
        return group
    first: dict[tuple, str] = {}
    for group, key in zip(named, where):
        if key in copied:
            parent[root(group)] = root(first.setdefault(key, group))
    named = [root(group) for group in named]
    log.warning("%d of %d images are copies medclf augment wrote (name.augN): each kept with its source and the "
                "source's other copies, on one side of a split and one vote in a score", sum(copies), len(named))
    return np.asarray(named)


def group_kind(groups: np.ndarray) -> str:
    """What :func:`split_groups`' answer holds together, in a word for the split's summary line."""
    named = [str(group) for group in groups[:1000] if not str(group).startswith("file:")]
    return "patients" if named and all(group.startswith(("group:", "name:", "folder:", "pattern:"))
                                       for group in named) else "sources"


def file_groups(paths: tuple[str, ...], pattern: str) -> np.ndarray:
    """A group name per file: the regex's first group (or whole match) in the file name, else the name itself.

    Images of one patient (``person12_bacteria_3.jpeg`` → ``person12`` with ``^person\\d+``) must sit on one
    side of a split, or validation measures memory of the patient rather than skill.
    """
    regex = re.compile(pattern)
    groups = []
    for path in paths:
        match = regex.search(Path(path).name)
        groups.append((match.group(1) if match.groups() else match.group(0)) if match else Path(path).name)
    return np.asarray(groups)


def listed_groups(folder: ImageFolder, naming: Labeller | None) -> np.ndarray | None:
    """The patient (or lesion) a labels file gives each image, where it names them for every image; an image
    it gives none is a group of its own. None where there are none to give."""
    if naming is None:
        return None
    groups = [naming.group(Path(path)) for path in folder.paths]
    if not any(group is not None for group in groups):
        return None
    return np.asarray([f"group:{g}" if g is not None else f"file:{p}" for g, p in zip(groups, folder.paths)])


def source_groups(folder: ImageFolder) -> np.ndarray | None:
    """The folder each file's class folder sits in, where there are ``MIN_SUBFOLDERS`` or more of them and
    every class sits in two or more: patients or slides each holding class folders (the IDC breast histology
    patches' ``10253/{0,1}/``, which :func:`~.layout.class_folders` pools). Categories each holding classes of
    their own (HyperKvasir's ``pathological-findings/polyps``) are not: a category's classes would all be held
    out together."""
    above = [_folder_above(Path(path), folder.classes[label]) for path, label in zip(folder.paths, folder.labels)]
    per_class: dict[int, set[str]] = {}
    for source, label in zip(above, folder.labels):
        if source is not None:
            per_class.setdefault(int(label), set()).add(source)
    sources = set().union(*per_class.values())
    if len(sources) < MIN_SUBFOLDERS or any(len(names) < 2 for names in per_class.values()):
        return None
    log.warning("%d images sit in class folders inside %d folders (patients, slides: %s...): a folder's images are "
                "%s", sum(source is not None for source in above), len(sources), ", ".join(sorted(sources)[:3]),
                KEPT_TOGETHER)
    return np.asarray([f"folder:{source}" if source is not None else f"file:{path}"
                       for source, path in zip(above, folder.paths)])


def _folder_above(file: Path, class_name: str) -> str | None:
    """The name of the folder holding ``file``'s class folder; None where it has none (:func:`_class_folder`)."""
    folder = _class_folder(file, class_name)
    return folder.parent.name if folder is not None else None


def _class_folder(file: Path, class_name: str) -> Path | None:
    """The nearest folder above ``file`` named as its class; None where there is none (labels from names or a
    sheet)."""
    return next((parent for parent in file.parents if parent.name == class_name), None)


def sheet_folder_groups(folder: ImageFolder) -> np.ndarray | None:
    """For images a sheet or their names label, with no class folder to start from: :func:`subfolder_groups`
    below the folder all of them sit in (a sheet listing CheXpert's ``patient00001/study1/view1.jpg``: a
    patient's films on both sides of the split, 36 of 36 validation patients, before)."""
    if not folder.paths:
        return None
    root = Path(os.path.commonpath([str(Path(path).parent) for path in folder.paths]))
    below = [Path(path).parent.relative_to(root).parts for path in folder.paths]
    below = [folders[1:] if folders and is_part_name(folders[0]) else folders for folders in below]  # HAM's parts
    return subfolder_groups(folder, below, f"{root.name}/")


def subfolder_groups(folder: ImageFolder, below: list[tuple[str, ...]] | None = None,
                     under: str = "their class folders") -> np.ndarray | None:
    """The sub-folder below each file's class folder — ``PNEUMONIA/patient12/study1/IM0001`` → ``patient12``, as
    PACS exports and many archives file images by patient or study — at the shallowest level where most files sit
    in one (``MIN_NESTED``) and there are ``MIN_SUBFOLDERS`` of them: BreakHis files its patients three levels
    down (``benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/``), below one ``SOB`` and a few tumour types. A file
    above that level is a group of its own. Right below the class, the same sub-folder name under two classes
    is one group: one patient's normal and abnormal films stay on one side of the split."""
    if below is None:
        below = [_folders_below(Path(path), folder.classes[label])
                 for path, label in zip(folder.paths, folder.labels)]
    too_few = None
    for level in range(max(map(len, below), default=0)):
        groups = [f"folder:{'/'.join(folders[:level + 1])}" if len(folders) > level else f"file:{path}"
                  for folders, path in zip(below, folder.paths)]
        nested = sum(len(folders) > level for folders in below)
        subfolders = len({group for group in groups if group.startswith("folder:")})
        names = sorted({group.rsplit("/", 1)[-1] for group in groups if group.startswith("folder:")})
        numbered = len(names) > 1 and numbered_alike(names)
        needed = MIN_NUMBERED if numbered else MIN_SUBFOLDERS
        if nested >= MIN_NESTED * len(groups) and subfolders < needed and numbered:
            too_few = too_few or (nested, len(groups), subfolders)
        if nested >= MIN_NESTED * len(groups) and subfolders >= needed:
            example = next(group for group in groups if group.startswith("folder:")).removeprefix("folder:")
            where = f"sub-folders of {under}" if level == 0 else \
                f"folders {level + 1} levels below {under} (such as {example})"
            log.warning("%d of %d images sit in %d %s (patients, studies): a folder's images are %s", nested,
                        len(groups), subfolders, where, KEPT_TOGETHER)
            return np.asarray(groups)
    if too_few is not None:
        log.warning("%d of %d images sit in %d sub-folders of %s (patients, studies?): too few to hold whole ones "
                    "out (%d are needed), so validation may share them with training and flatter the model",
                    *too_few, under, MIN_NUMBERED)
    return None


def _folders_below(file: Path, class_name: str) -> tuple[str, ...]:
    """The folders between ``file`` and its class folder, outermost first; none where it sits right in it (or
    has none: :func:`_class_folder`)."""
    folder = _class_folder(file, class_name)
    return file.parent.relative_to(folder).parts if folder is not None else ()


def name_key(name: str, class_name: str) -> str | None:
    """What the images of one patient, slide or series share where a dataset numbers them: the file name without
    its extension and its last number (the image's), then up to the number before it (the patient's; words
    after it describe the image), and without a class name it opens with: ``person12_bacteria_3.jpeg`` and
    ``person12_virus_7.jpeg`` → ``person12``, ``IM-0115-0001.jpeg`` → ``IM-0115``, OCT's ``CNV-1016042-1.jpeg``
    → ``-1016042`` (as ``DRUSEN-1016042-2.jpeg`` in class DRUSEN: one eye; a class name counts where a separator
    follows it). A name ending in which eye, breast or view it shows is the patient's without it: EyePACS'
    ``10_left.jpeg`` and ``10_right.jpeg`` → ``10``, CBIS-DDSM's ``Calc-Training_P_00005_RIGHT_CC`` →
    ``Calc-Training_P_00005``; one ending in its class's name, without it (C-NMC's ``UID_11_10_1_all.bmp`` →
    ``UID_11_10``). None for a name that ends in none of these. A copy ``medclf augment`` wrote (``x.aug3.jpg``)
    has its source's."""
    stem = _without_class_name(AUGMENTED_COPY.sub("", Path(name).stem), class_name)
    if (side := _SIDE_OR_VIEW.fullmatch(stem)) is not None:
        key = side.group(1)
    elif (match := _NUMBERED.fullmatch(stem)) is not None:
        key = _UP_TO_A_NUMBER.sub(r"\1", match.group(1))  # person12_bacteria_ → person12; cat. stays (no number)
    else:
        return None
    opens = key.casefold().startswith(class_name.casefold()) and not key[len(class_name):][:1].isalnum() \
        and len(key) > len(class_name)  # the class name and more: class 0's patient 0 (0_left.jpeg) stays 0
    return key[len(class_name):] if opens else key  # CNV-1016042 → -1016042; class 0's 0123456 stays


def _without_class_name(stem: str, class_name: str) -> str:
    """``stem`` without the class name it ends in after a separator (``UID_11_10_1_all`` in class ``all``); a
    class named by a number is not cut (knee grade 1's ``9003175_1`` is that patient's first knee)."""
    ends = stem.casefold().endswith(class_name.casefold()) and len(stem) > len(class_name)
    if not ends or not any(c.isalpha() for c in class_name) or stem[-len(class_name) - 1].isalnum():
        return stem
    return stem[:-len(class_name)].rstrip(" _.-")


def name_groups(folder: ImageFolder) -> np.ndarray | None:
    """Files whose names share what comes before their own number (:func:`name_key`), where that is how the dataset
    names a patient's images (the ``NAMED_*`` bounds), else None — taken as far up the name as the bounds still
    hold (:func:`coarser_key`): OASIS' ``OAS1_0028_MR1_mpr-1_100.jpg`` is one scan's slice, and the subject's other
    scans (``mpr-2``...) are the same brain, so ``OAS1_0028``; Kermany's ``IM-0115`` stays (all ``IM`` is most of a
    class)."""
    keys = _nested_keys_joined([name_key(Path(path).name, folder.classes[label])
                                for path, label in zip(folder.paths, folder.labels)])
    groups = _named(keys, folder.paths)
    if not _how_names_are_numbered(groups, folder.labels):
        return None
    while (coarser := _nested_keys_joined([coarser_key(key) for key in keys])) != keys and _how_names_are_numbered(
            grouped := _named(coarser, folder.paths), folder.labels):
        keys, groups = coarser, grouped
    names, sizes = np.unique(groups, return_counts=True)
    example = names[np.argmax(sizes)].removeprefix("name:")
    log.warning("%d of %d images share the name before their own number with others (%d groups such as '%s…', up "
                "to %d images): read as one patient's or series' images, %s", sizes[sizes > 1].sum(), len(groups),
                np.sum(sizes > 1), example, sizes.max(), KEPT_TOGETHER)
    return groups


def _nested_keys_joined(keys: list[str | None]) -> list[str | None]:
    """Each key that is another key and more after a separator, as that one: Kermany numbers a patient's films
    ``IM-0435-0001.jpeg`` and ``IM-0435-0001-0001.jpeg``, whose keys ``IM-0435`` and ``IM-0435-0001`` never met
    (18 patients had films on both sides of the validation split)."""
    found = set(keys) - {None}
    joined = []
    for key in keys:
        shorter = None if key is None else next(
            (key[:i] for i, character in enumerate(key) if character in _SEPARATORS and key[:i] in found), None)
        joined.append(shorter or key)
    return joined


def coarser_key(key: str | None) -> str | None:
    """``key`` without its last word (``OAS1_0028_MR1_mpr-1`` → ``OAS1_0028_MR1_mpr``); unchanged where it has
    one word (``person12``, OCT's ``-1016042``)."""
    match = _LAST_WORD.fullmatch(key) if key is not None else None
    return match.group(1) if match else key


def _named(keys: list[str | None], paths: tuple[str, ...]) -> np.ndarray:
    return np.asarray([f"name:{key}" if key is not None else f"file:{path}" for key, path in zip(keys, paths)])


def _how_names_are_numbered(groups: np.ndarray, labels: np.ndarray) -> bool:
    """Whether ``groups`` (from names) are how the dataset numbers a patient's images: within the ``NAMED_*``
    bounds."""
    index, sizes = np.unique(groups, return_inverse=True, return_counts=True)[1:]
    shared, largest = sizes[sizes > 1].sum() / len(groups), sizes.max()
    too_large = largest > max(NAMED_LARGEST * len(groups), NAMED_FLOOR)
    shared_names = np.unique(groups)[sizes > 1]
    enough = np.sum(sizes > 1) >= NAMED_GROUPS or (
        np.sum(sizes > 1) >= MIN_NUMBERED and all(any(c.isdigit() for c in str(name)) for name in shared_names))
    return not (shared < NAMED_SHARED or not enough or too_large or _a_class_bulk(labels, index.reshape(-1)))


def _a_class_bulk(labels: np.ndarray, index: np.ndarray) -> bool:
    """Whether one group holds most of some class's images (``NAMED_BULK``): a name numbered through a class, not
    a patient."""
    for label in np.unique(labels):
        if np.bincount(index[labels == label]).max() > NAMED_BULK * np.sum(labels == label):
            return True
    return False
