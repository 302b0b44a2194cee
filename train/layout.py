"""How a dataset is laid out on disk: which folders are classes, which are splits, and which look like neither —
a copy of the dataset inside it, segmentation masks beside their images, classes one level further down, split
further or into numbered parts, a whole dataset wrapped in a folder of its own, images lying loose instead of in
class folders.

Each finding is said in one warning line (or refused with a :class:`DatasetError` saying where to point), so a
dataset as it unpacks is read as its owner meant, or the owner is told why not.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from medclf.runtime.annotations import masks_said, segmentation_masks
from medclf.runtime.inputs import HOUSEKEEPING, folder_contents, is_image_file

log = logging.getLogger(__name__)

SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "validate", "dev", "eval",
                                                   "evaluation"),
               "test": ("test", "testing", "holdout")}
# ... as datasets spell them: Training, training_set (the seed tutorials' dogs and cats), test-data, val images
_SPLIT_SUFFIX = re.compile(r"(set|data|images|split)$")
NAME_SEPARATORS = (".", "_", "-", " ")  # loose_images_hint: how names put a label first (cat.0, benign (1))
_PART = re.compile(r"[\W_]*(part|batch|chunk|split|set|folder|fold)[\W_]*\d+$", re.IGNORECASE)  # _part_1, fold_0
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".7z", ".rar")  # as datasets download
FEW_SUBFOLDERS = 9  # more sub-folders per class are patients or studies, not finer classes


class DatasetError(ValueError):
    """The folder is not a usable folder-per-class dataset; the message says what is wrong."""


def check_class_names(classes: Sequence[str]) -> None:
    """A DatasetError for a class name no model card, labels file or table can carry whole: one holding a line
    break or another control character (a Triton labels.txt is a line per class: "a\nb" made its lines name
    the wrong classes from there on), or not UTF-8 (a Latin-1 folder name trained, then no export could be
    written: "surrogates not allowed"). Said before training, naming the folder to rename."""
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetError(f"class {name!r}: its name is not UTF-8 (a folder named on another system, as "
                               f"{os.fsencode(name)!r}); rename it") from None
        if any(unicodedata.category(character) == "Cc" for character in name):
            raise DatasetError(f"class {name!r}: its name holds a line break, tab or other control character, "
                               "which labels files and tables cannot carry; rename it")


def not_a_folder(root: Path) -> DatasetError:
    """The error for a dataset path that is no folder, saying what it is where that helps: an archive as
    downloaded (``chest-xray-pneumonia.zip``) must be unpacked first."""
    if root.is_file() and root.name.lower().endswith(ARCHIVES):
        return DatasetError(f"{root}: an archive, not a folder: unpack it and pass the folder it gives")
    return DatasetError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")


def class_folders(root: Path, found: list[str]) -> dict[str, list[str]]:
    """Each class and the folders under ``root`` holding its images: each folder found is a class of its own,
    unless the folders are plainly not the classes but the folders below them are — numbered parts of the
    dataset that each hold the same class folders (C-NMC's ``fold_0/{all,hem}``, ``fold_1/{all,hem}``...: the
    classes, pooled over the parts), patients or slides each holding class folders (IDC's ``10253/{0,1}``:
    pooled too, a patient's images kept together by :func:`~.groups.source_groups`), classes each split into
    finer ones named after it (LC25000's ``lung_image_sets/{lung_aca,lung_n,lung_scc}`` beside
    ``colon_image_sets/{colon_aca,colon_n}``: the five tissue types), or trees of categories (their leaves).
    Each is said in one line; ``--top-folders`` (:class:`~.labellers.TopFolders`) reads the folders as found."""
    pooled = _pooled_parts(root, found)
    if pooled is not None:
        log.warning("%s: %s are numbered parts of the dataset, each holding the same class folders (%s): read as "
                    "%d classes, each pooled over the parts", root, _shown(found), _shown(sorted(pooled)), len(pooled))
        return pooled
    sources = _pooled_sources(root, found)
    if sources is not None:
        log.warning("%s: its %d folders (%s) are numbered as patients or slides are, each holding class folders (%s): "
                    "read as %d classes, each pooled over them", root, len(found), _shown(found),
                    _shown(sorted(sources)), len(sources))
        return sources
    finer = _finer_classes(root, found)
    if finer is not None:
        log.warning("%s: every folder here holds only folders named after it (%s): read as the %d finer classes "
                    "(%s); to classify %s instead, pass --top-folders", root,
                    "; ".join(f"{name}: {_shown([Path(f).name for f in folders], 3)}" for name, folders in
                              _by_parent(finer).items()), len(finer), _shown(sorted(finer)), _shown(found))
        return finer
    leaves = _category_leaves(root, found)
    if leaves is not None:
        log.warning("%s: %s are categories, their images filed %d levels down or more (%s): read as the %d classes "
                    "there (%s); to classify %s instead, pass --top-folders", root,
                    _shown(found), min(path.count("/") for paths in leaves.values() for path in paths),
                    _shown([paths[0] for paths in leaves.values()], 2), len(leaves), _shown(list(leaves)),
                    _shown(found))
        return leaves
    return {name: [name] for name in found}


def is_part_name(name: str) -> bool:
    """``name`` ends as a numbered part's does (``_part_1``, ``fold_0``)."""
    return _PART.search(name) is not None


def numbered_parts(names: list[str]) -> bool:
    """Whether ``names`` are two or more numbered parts of one whole: ``fold_0``, ``fold_1``; HAM10000's
    ``HAM10000_images_part_1``, ``_part_2`` (and the lowercase copies Kaggle's version adds)."""
    return len(names) >= 2 and all(map(is_part_name, names)) and len(
        {_PART.sub("", name).casefold() for name in names}) == 1


def _pooled_parts(root: Path, found: list[str]) -> dict[str, list[str]] | None:
    """Class name → its folder in each part, where every folder found is a numbered part (``fold_0``, ``part 2``)
    of one whole, holding no image of its own and the same two or more class folders as the others."""
    if not numbered_parts(found):
        return None
    inner = [_subfolders(root / name) for name in found]
    if len(inner[0]) < 2 or any(folders != inner[0] for folders in inner) or any(_holds_images(root / name)
                                                                                 for name in found):
        return None
    return {name: [f"{part}/{name}" for part in found] for name in inner[0]}


def _pooled_sources(root: Path, found: list[str]) -> dict[str, list[str]] | None:
    """Class name → its folder in each source, where the folders found are more than ``FEW_SUBFOLDERS``
    patients or slides numbered alike (the IDC breast histology patches' ``10253/{0,1}``, ``10254/{0,1}``...),
    none holding an image of its own, each holding class folders from one set of 2 to ``FEW_SUBFOLDERS`` names
    (not splits), each name in two of them or more (a patient holds the classes it has: IDC's both, mostly; a
    patient with one diagnosis, one). Classes are rarely numbered alike, and never ten of them or more, each
    holding a few folders of the same names."""
    if len(found) <= FEW_SUBFOLDERS or not numbered_alike(found) or any(_holds_images(root / n) for n in found):
        return None
    inner = {name: _subfolders(root / name) for name in found}
    classes = sorted({sub for subs in inner.values() for sub in subs})
    if not 2 <= len(classes) <= FEW_SUBFOLDERS or not all(inner.values()) or any(map(is_split_name, classes)):
        return None
    if any(sum(name in subs for subs in inner.values()) < 2 for name in classes):
        return None
    return {name: [f"{source}/{name}" for source in found if name in inner[source]] for name in classes}


def numbered_alike(names: list[str]) -> bool:
    """``10253``, ``10254``; ``patient_01``, ``patient_02``: names that differ only in their numbers."""
    return len(shapes := {re.sub(r"\d+", "#", name.casefold()) for name in names}) == 1 and "#" in shapes.pop()


def _finer_classes(root: Path, found: list[str]) -> dict[str, list[str]] | None:
    """Finer class name → its folder, where every folder found holds no image of its own, only 2 to
    ``FEW_SUBFOLDERS`` folders named after it (their first word begins like one of its words: ``lung_aca`` in
    ``lung_image_sets``, ``cervix_dyk`` in ``Cervical Cancer``), all names different, and not the same finer
    names under every folder (``Normal/{Normal_siteA,Normal_siteB}`` beside ``Pneumonia/{Pneumonia_siteA,...}``
    are sites, not classes)."""
    if len(found) < 2 or any(_holds_images(root / name) for name in found):
        return None
    inner = {name: _subfolders(root / name) for name in found}
    if not all(2 <= len(folders) <= FEW_SUBFOLDERS and all(_named_after(sub, name) for sub in folders)
               for name, folders in inner.items()):
        return None
    names = [sub.casefold() for folders in inner.values() for sub in folders]
    endings = {frozenset(" ".join(_words(sub)[1:]) for sub in folders) for folders in inner.values()}
    if len(set(names)) < len(names) or len(endings) == 1:
        return None
    return {sub: [f"{name}/{sub}"] for name, folders in inner.items() for sub in folders}


def _patients_among(leaves: list[str]) -> bool:
    """Whether leaves numbered alike under one folder (``patient001``, ``patient002``) recur so under two or more
    top folders — patients under each class's sites, not classes (``colitis_grade_1``, ``_2``, ``_3`` under one
    kind of finding are classes)."""
    shapes: dict[str, set[str]] = {}
    siblings: dict[Path, list[str]] = {}
    for path in leaves:
        siblings.setdefault(Path(path).parent, []).append(Path(path).name)
    for parent, names in siblings.items():
        if len(names) > 1 and numbered_alike(names):
            shapes.setdefault(re.sub(r"\d+", "#", names[0].casefold()), set()).add(parent.parts[0])
    return any(len(tops) > 1 for tops in shapes.values())


def _category_leaves(root: Path, found: list[str], deepest: int = 4) -> dict[str, list[str]] | None:
    """Leaf folder name → its folder, where the folders found are trees of categories (HyperKvasir's
    ``lower-gi-tract/pathological-findings/polyps/``, 23 classes under 2 regions and 6 kinds of finding): every
    folder above the leaves holds no image and 2 to ``FEW_SUBFOLDERS`` folders, every leaf holds images and no
    folder, no leaf less than two levels down, each named with a word (a scan's UID is not a class) and all
    differently (``patient1/{40X,100X}`` under every class are magnifications, not classes). Patients' folders
    fail it: a class holds more of them, or one study each, or they are numbered alike under every class
    (:func:`_patients_among`)."""
    leaves: list[str] = []

    def is_tree(path: str, depth: int) -> bool:
        inner = _subfolders(root / path)
        if not inner:
            leaves.append(path)
            return depth >= 2 and _holds_images(root / path)
        return (depth < deepest and 2 <= len(inner) <= FEW_SUBFOLDERS and not _holds_images(root / path)
                and all(is_tree(f"{path}/{name}", depth + 1) for name in inner))

    if len(found) < 2 or not all(is_tree(name, 0) for name in found):
        return None
    if _patients_among(leaves):
        return None
    names = [Path(path).name for path in leaves]
    if len({name.casefold() for name in names}) < len(names) or not all(
            any(len(word) >= 3 for word in _words(name)) for name in names):
        return None
    return {name: [path] for name, path in zip(names, leaves)}


def _named_after(child: str, parent: str) -> bool:
    """Whether ``child``'s first word begins as one of ``parent``'s words does (at least 3 letters, 4 where both
    have them): ``lung_aca`` / ``lung_image_sets``, ``lymph_cll`` / ``Lymphoma``, ``all_pre`` / ``ALL``."""
    first = (_words(child) or [""])[0]
    return any(len(common := os.path.commonprefix([first, word])) >= min(4, len(first), len(word)) and len(common) >= 3
               for word in _words(parent))


def _words(name: str) -> list[str]:
    return re.findall(r"[a-z]+", name.lower())


def _by_parent(folders: dict[str, list[str]]) -> dict[str, list[str]]:
    parents: dict[str, list[str]] = {}
    for paths in folders.values():
        for path in paths:
            parents.setdefault(Path(path).parent.name, []).append(path)
    return parents


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image of its own (not in a sub-folder)."""
    try:
        return any(path.is_file() and is_image_file(path) for path in folder.iterdir())
    except OSError:
        return False


def check_found(root: Path, per_class: dict[str, list[Path]]) -> None:
    """Say what looks wrong with the classes found: a folder without images must not vanish unsaid; a folder
    of loose images, or a dataset whose class folders may be one level further down, is refused saying what to
    do; class folders that may not be the classes are warned of."""
    for name in (name for name, files in per_class.items() if not files):
        log.warning("%s: no image in it (%s), so it is not a class", root / name, folder_contents(root / name))
    with_images = {name: files for name, files in per_class.items() if files}
    if not with_images:
        raise DatasetError(f"{root}: need at least 2 class folders with images, found 0{loose_images_hint(root)}")
    if len(with_images) == 1:
        _one_level_too_high(root, root / next(iter(with_images)))
    _parts_of_one_folder(root, list(with_images))
    inner = {name: sorted({path.relative_to(root / name).parts[0] for path in files if path.parent != root / name})
             for name, files in with_images.items()}
    shared = inner[next(iter(inner))] if len(set(map(tuple, inner.values()))) == 1 else []
    if shared and all(split_of(name) for name in shared):  # NORMAL/{train,test}: split class first, read so
        return
    if len(with_images) >= 2 and len(shared) >= 2:
        log.warning("%s: every class folder (%s) holds the same sub-folders (%s): if those are the classes, pass "
                    "--leaf-folders (or point at one of the folders here)", root, _shown(list(with_images)),
                    _shown(shared))
    elif len(with_images) >= 2 and _sorted_into_a_few_folders(root, with_images, inner):
        log.warning("%s: every class folder keeps its images in a few sub-folders of its own (%s): trained as %d "
                    "classes (%s); if the %d sub-folders are the classes, pass --leaf-folders", root,
                    "; ".join(f"{name}: {_shown(folders, 3)}" for name, folders in list(inner.items())[:3]),
                    len(with_images), _shown(list(with_images)), sum(map(len, inner.values())))


def _parts_of_one_folder(root: Path, names: list[str]) -> None:
    """Refuse (beside a sheet) or warn of class folders that are parts of one folder of images, not classes:
    HAM10000 ships ``HAM10000_images_part_1/`` and ``_part_2/`` beside ``HAM10000_metadata.csv``, which holds
    the labels — trained as folders, the model would learn which half of the download an image came in."""
    if not numbered_parts(names):
        return
    sheets = sorted(root.glob("*.csv"))
    why = f"{root}: the class folders ({_shown(names)}) are numbered parts of one folder of images, not classes"
    if sheets:
        raise DatasetError(f"{why}; to take the labels from {sheets[0].name} beside them, pass --labels {sheets[0]}")
    log.warning("%s: if the labels are elsewhere, pass --labels FILE.csv", why)


def _sorted_into_a_few_folders(root: Path, with_images: dict[str, list[Path]], inner: dict[str, list[str]]) -> bool:
    """Whether every class folder holds no image of its own, only 2 to ``FEW_SUBFOLDERS`` folders of them, not
    named after it (finer classes named so are read as the classes, :func:`class_folders`): maybe finer classes
    (``benign/{adenosis,fibroadenoma}``), maybe a few patients each — the user knows which."""
    return all(2 <= len(inner[name]) <= FEW_SUBFOLDERS and all(path.parent != root / name for path in files)
               for name, files in with_images.items())


def without_nested_copies(root: Path, found: list[str]) -> list[str]:
    """``found`` without folders holding folders named as two or more of the others: a copy of the dataset
    inside itself, not a class (the NIH malaria archive unpacks to ``cell_images/{Parasitized,Uninfected}``
    beside ``cell_images/cell_images/{Parasitized,Uninfected}``)."""
    names = {name.casefold() for name in found}
    kept = []
    for name in found:
        inner = [d for d in _subfolders(root / name) if d.casefold() in names - {name.casefold()}]
        if len(inner) >= 2 and not is_split_name(name):  # a test/ beside the classes is said later, as a split
            log.warning("%s: holds folders named as the classes beside it (%s), so it is a copy of the dataset, "
                        "not a class; left out", root / name, _shown(inner))
        else:
            kept.append(name)
    return kept


def _subfolders(folder: Path) -> list[str]:
    """The names of ``folder``'s sub-folders that could be classes, sorted; none where it cannot be listed."""
    try:
        return sorted(d.name for d in folder.iterdir() if d.is_dir() and not not_a_class(d.name))
    except OSError:
        return []


def _shown(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _one_level_too_high(root: Path, only: Path) -> None:
    """Refuse a dataset of one class folder whose own sub-folders may be the classes (archives often unpack
    to ``dataset/images/{A,B}``; wrapped in a folder of their own name they are found, :func:`unwrapped_classes`),
    saying where to point instead."""
    found = _single_folders(only)[-1]
    if len(inner := _subfolders(found)) >= 2:
        raise DatasetError(f"{root}: need at least 2 class folders with images, found 1 ({only.name}); if the "
                           f"sub-folders of {found.relative_to(root)} ({_shown(inner)}) are the classes, point at "
                           f"{found}")


def without_masks(root: Path, per_folder: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """Each folder's images (``root / name``: a class's) without the segmentation masks of others among them
    (:mod:`~medclf.runtime.annotations`), which are said once for ``root``."""
    kept, masks = {}, []
    for name, files in per_folder.items():
        found = segmentation_masks(files, root / name)
        kept[name] = [file for file in files if file not in found]
        masks.extend(sorted(found))
    if masks:
        log.warning("%s, not images of a class", masks_said(masks, root))
    return kept


MEDCLF_WRITES = ("preprocess.json", "metrics.json", "crossval.json")  # in a run, an evaluation, a cross-validation


def written_by_medclf(folder: Path) -> bool:
    """A folder medclf wrote — a run's ``--out`` put inside its dataset, an evaluation's, a cross-validation's:
    its pictures (``roc.png``, ``curves.png``) are no images of a class, and the next run would learn them."""
    return any((folder / name).is_file() for name in MEDCLF_WRITES)


def without_outputs(root: Path, images: list[Path]) -> list[Path]:
    """``images`` but those in a folder below ``root`` that medclf wrote (:func:`written_by_medclf`), said once."""
    written: dict[Path, bool] = {}

    def inside_output(folder: Path) -> bool:
        if folder == root or root not in folder.parents:
            return False
        if folder not in written:
            written[folder] = written_by_medclf(folder) or inside_output(folder.parent)
        return written[folder]

    kept = [image for image in images if not inside_output(image.parent)]
    if len(kept) < len(images):
        folders = sorted(folder.relative_to(root).as_posix() for folder, was in written.items()
                         if was and not written.get(folder.parent))  # the outermost: a run, not its evaluation
        log.warning("%s: %d images in folders medclf wrote (%s) left out: a run's pictures are not data", root,
                    len(images) - len(kept), ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else ""))
    return kept


def not_a_class(folder: str) -> bool:
    """Hidden folders, and those systems keep among the user's (:data:`~medclf.runtime.inputs.HOUSEKEEPING`:
    ``__MACOSX``, a NAS's ``@eaDir`` thumbnails, ``$RECYCLE.BIN``...)."""
    return folder.startswith(".") or folder in HOUSEKEEPING


def is_split_name(name: str, splits: Iterable[str] = tuple(SPLIT_NAMES)) -> bool:
    """``name`` is how datasets name one of ``splits`` (``test``, ``Validation``...), not a class."""
    return any(split_key(name) in SPLIT_NAMES[split] for split in splits)


def split_of(name: str) -> str | None:
    """``"train"``, ``"val"`` or ``"test"`` for a folder ``name`` spelt as that split (``Testing``), else None."""
    return next((split for split, spellings in SPLIT_NAMES.items() if split_key(name) in spellings), None)


def split_key(name: str) -> str:
    """``Training_Set`` → ``training``: a folder name as :data:`SPLIT_NAMES` spells splits."""
    return _SPLIT_SUFFIX.sub("", re.sub(r"[\s_.-]+", "", name.lower())) or name.lower()


def find_split(root: str | os.PathLike[str], split: str) -> Path | None:
    """The ``train``/``val``/``test`` sub-folder of a pre-split dataset (any case, common synonyms, spelt
    ``training_set`` or ``test-data`` too), if present. Where none is named a training split outright, split
    folders may carry a word of their own beside the split's, as long as two or more do and one is training
    (Intel's ``seg_train``/``seg_test``, ``chest_train``, ``1_train``/``2_val``/``3_test``, ``train_dir``): they
    were read as classes, the test images trained on as a class of their own."""
    root = Path(root)
    if not root.is_dir():
        return None
    folders = [d for d in sorted(root.iterdir(), reverse=True) if d.is_dir() and not not_a_class(d.name)]
    names = {split_key(d.name): d for d in folders}  # first name wins
    if not any(n in names for n in SPLIT_NAMES["train"]):
        worded = {word: d for d in folders if (word := _split_word(d.name)) is not None}
        if len(worded) >= 2 and any(word in SPLIT_NAMES["train"] for word in worded):
            names = worded
    return next((names[n] for n in SPLIT_NAMES[split] if n in names), None)


def _split_word(name: str) -> str | None:
    """The split a folder name holds as a word beside words of its own (``seg_train``: train; ``3_test``: test;
    ``train_dir``: train; ISIC's ``ISIC2018_Task3_Training_Input``: training), or None — and None for a
    challenge's folders of answers rather than images (``ISIC2018_Task3_Training_GroundTruth``, masks)."""
    words = re.findall(r"[a-z]+|\d+", name.lower())
    if len(words) < 2 or is_annotation_folder(name):  # one word is a split's exactly, or not at all (split_key)
        return None
    return next((word for word in reversed(words) if word in _SPLIT_WORDS), None)


_SPLIT_WORDS = frozenset(word for spellings in SPLIT_NAMES.values() for word in spellings)
# Words naming what a challenge ships beside its images, per split: its answers, masks, metadata
_NOT_IMAGES = frozenset({"groundtruth", "ground", "truth", "gt", "labels", "label", "metadata", "masks", "mask",
                         "segmentation", "segmentations", "annotations"})


def is_annotation_folder(name: str) -> bool:
    """A folder of what a dataset ships beside its images (``masks/``, HAM10000's
    ``HAM10000_segmentations_lesion_tschandl/``, ISIC's ``..._GroundTruth/``), not of images to learn from."""
    return bool(set(re.findall(r"[a-z]+", name.lower())) & _NOT_IMAGES)


def unwrapped(data: str | os.PathLike[str]) -> Path:
    """``data``, or the folder below it that holds the splits (``train/``...) where ``data`` holds only a chain of
    single folders down to it: archives unpack into a folder of their own name (``chest_xray.zip`` →
    ``chest_xray/chest_xray/{train,test,val}``). Said once; class folders wrapped so are
    :func:`unwrapped_classes`' to find."""
    root = Path(data)
    inner = next((folder for folder in _single_folders(root)[1:] if find_split(folder, "train") is not None), None)
    if inner is None:
        return root
    log.warning("%s: holds only %s, a dataset split into %s: reading that", root, inner.relative_to(root).as_posix(),
                ", ".join(sorted(d.name for d in inner.iterdir() if d.is_dir() and not not_a_class(d.name))))
    return inner


def unwrapped_classes(root: Path) -> Path:
    """``root``, or the folder of class folders below it where ``root`` holds only a chain of single folders down
    to it and one of them is named as the folder holding it — an archive unpacked into a folder of its name
    (the kidney CT set's ``CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/
    {Cyst,Normal,Stone,Tumor}``). Said once. A chain named otherwise (``images/{A,B}``, or one class's
    patient folders) is left to the class checks, which ask the user where to point."""
    chain = _single_folders(root)
    wrapped = any(_same_name(outer.name, inner.name) for outer, inner in zip(chain, chain[1:]))
    if not wrapped or len(_subfolders(chain[-1])) < 2:
        return root
    log.warning("%s: holds only %s, wrapped in a folder of its own name as archives unpack: reading the classes "
                "there", root, chain[-1].relative_to(root).as_posix())
    return chain[-1]


def _single_folders(root: Path, most: int = 4) -> list[Path]:
    """``root`` and the folders below it, each the only folder in the one above, which holds no image (at most
    ``most`` levels down: a folder holding only a link to itself would never end)."""
    chain = [root]
    while len(chain) <= most and len(inner := _subfolders(chain[-1])) == 1 and not _holds_images(chain[-1]):
        chain.append(chain[-1] / inner[0])
    return chain


def _same_name(a: str, b: str) -> bool:
    return re.sub(r"[\W_]+", "", a).casefold() == re.sub(r"[\W_]+", "", b).casefold()


def loose_images_hint(root: Path) -> str:
    """What to do with a folder whose images lie loose rather than in class folders: the ``--name-labels`` that
    would read their labels from their names, where one does (``cat.0.jpg``, ``dog.0.jpg`` → ``.``: two labels,
    each on several files), else the other ways (naming a sheet beside it, as APTOS ships ``train.csv`` beside
    ``train_images/``). Empty where no image lies loose."""
    names = [path.name for path in sorted(root.iterdir()) if path.is_file() and is_image_file(path)]
    if not names:
        return ""
    for separator in NAME_SEPARATORS:
        labels = Counter(Path(name).stem.split(separator)[0] for name in names if separator in Path(name).stem)
        if sum(labels.values()) >= 0.9 * len(names) and 2 <= len(labels) <= 50 and min(labels.values()) >= 2 \
                and not any(label.isdigit() for label in labels):
            return (f"; {len(names)} images lie loose in it, named by label ({_shown(sorted(labels))}): pass "
                    f"--name-labels '{separator}' to read labels from the names")
    sheets = sorted(root.glob("*.csv")) + sorted(root.parent.glob("*.csv"))  # APTOS: train.csv by train_images/
    likeliest = _likeliest_sheet(sheets, [root / name for name in names])
    sheet = f"--labels {likeliest}" if likeliest else "--labels FILE.csv"
    return (f"; {len(names)} images lie loose in it: sort them into one folder per class, or label them by name "
            f"(--name-labels SEP[:POS]) or by a sheet ({sheet})")


def _likeliest_sheet(sheets: list[Path], images: list[Path]) -> Path | None:
    """The sheet that lists the most of ``images``; where none lists any, the first that is no competition's
    submission template (APTOS' ``sample_submission.csv`` beside ``train.csv``)."""
    from .labels_csv import most_listing  # it imports this module

    best = most_listing(sheets, images)[0]
    if best is not None:
        return best.source
    return next((sheet for sheet in sheets if "submission" not in sheet.name.lower()), sheets[0] if sheets else None)
