"""MedMNIST as it downloads: one ``bloodmnist.npz`` (or ``bloodmnist_224.npz``) holding ``train_images``,
``train_labels``, ``val_...`` and ``test_...`` arrays, read as the folder-per-class dataset it stands for.

The arrays are written once as PNG files (lossless: the pixels the runtime will decode are the arrays') under
``<cache>/medmnist/<name>-<digest>/{train,val,test}/<class>/``, the classes named as MedMNIST's ``INFO`` names
them, and everything after that — splits, training, scoring — is medclf reading a pre-split folder. The file
is streamed a thousand images at a time, so a 224-px set larger than memory unpacks too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from medclf.runtime.cache import default_cache_dir
from medclf.runtime.cpu_limit import usable_cpus

from .layout import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver", "lung-left",
           "lung-right", "pancreas", "spleen")
CLASS_NAMES = {  # medmnist/info.py's INFO[name]["label"], in label order (MedMNIST v2/v3)
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                  "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    "dermamnist": ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("0", "1", "2", "3", "4"),  # diabetic retinopathy grades
    "breastmnist": ("malignant", "normal, benign"),
    "bloodmnist": ("basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"),
    "tissuemnist": ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                    "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                    "Thick Ascending Limb"),
    "organamnist": _ORGANS, "organcmnist": _ORGANS, "organsmnist": _ORGANS,
}


def is_npz(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() == ".npz" and Path(path).is_file()


def unpacked(npz: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The pre-split folder ``npz`` stands for, written on first use (said, atomically: a half-written folder
    is never taken for a whole one) and found again after, as long as the file is the same (path, size and
    time of change name it)."""
    npz = Path(npz).resolve()
    stat = npz.stat()
    digest = hashlib.sha256(f"{npz}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "medmnist" / f"{npz.stem}-{digest}"
    if folder.is_dir() and _whole(folder):
        return folder
    if folder.is_dir():  # files taken out of it since: written again rather than trained on short
        log.warning("%s: images missing since it was written from %s: written again", folder, npz)
        shutil.rmtree(folder, ignore_errors=True)
    log.warning("%s: MedMNIST's arrays, written once as PNG files (%s) and read from there", npz, folder)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_folders(npz, partial)
        (partial / COUNT_FILE).write_text(f"{_images_in(partial)}\n")
        partial.rename(folder)
    except OSError:
        if not folder.is_dir():  # else another run unpacked the same file first: theirs is as good
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


COUNT_FILE = ".images"  # how many PNG files an unpacked folder was written with


def _whole(folder: Path) -> bool:
    """Whether ``folder`` still holds every image it was written with (one written before the count: trusted)."""
    try:
        written = int((folder / COUNT_FILE).read_text())
    except (OSError, ValueError):
        return True
    return _images_in(folder) == written


def _images_in(folder: Path) -> int:
    return sum(name.endswith(".png") for _, _, names in os.walk(folder) for name in names)


def test_split(folder: Path) -> Path:
    """Where :func:`unpacked` put the test images: what ``medclf evaluate`` of an ``.npz`` scores."""
    return folder / "test"


def dataset_name(folder: Path) -> str:
    """What ``medclf evaluate`` names its folder after: ``folder``'s name, but an unpacked file's test split
    (``.../medmnist/pneumoniamnist-<digest>/test``) is named after the file, ``pneumoniamnist``."""
    folder = Path(folder).resolve()
    unpacked = folder.parent
    if folder.name == "test" and unpacked.parent.name == "medmnist" and re.search(r"-[0-9a-f]{12}$", unpacked.name):
        return unpacked.name.rsplit("-", 1)[0]
    return folder.name


def known_classes(name: str) -> tuple[str, ...] | None:
    """MedMNIST's class names for a file or folder it names (``bloodmnist_224`` is ``bloodmnist`` at 224 px)."""
    return CLASS_NAMES.get(name.lower().split("_")[0])


def _write_folders(npz: Path, out: Path) -> None:
    with zipfile.ZipFile(npz) as archive:
        arrays = {Path(name).stem for name in archive.namelist()}
        if not {"train_images", "train_labels"} <= arrays:
            raise DatasetError(f"{npz}: not a MedMNIST file (it holds {', '.join(sorted(arrays))}; MedMNIST's hold "
                               "train_images, train_labels, val_... and test_...)")
        labels = {split: _labels(npz, archive, split) for split in SPLITS
                  if {f"{split}_images", f"{split}_labels"} <= arrays}
        classes = _class_names(npz, labels)
        with ThreadPoolExecutor(usable_cpus()) as pool:  # OpenCV's PNG encoder lets go of the GIL
            for split, split_labels in labels.items():
                for folder in {classes[label] for label in np.unique(split_labels)}:
                    (out / split / folder).mkdir(parents=True)
                for start, images in _image_chunks(npz, archive, f"{split}_images"):
                    paths = [out / split / classes[split_labels[k]] / f"{split}{k}.png"
                             for k in range(start, start + len(images))]
                    list(pool.map(_write_png, paths, images))


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image if image.ndim == 2 else image[..., ::-1]):
        raise OSError(f"{path}: could not be written")


def _class_names(npz: Path, labels: dict[str, np.ndarray]) -> tuple[str, ...]:
    """MedMNIST's names for the labels, else the numbers."""
    known = known_classes(npz.stem)
    count = int(max(split_labels.max() for split_labels in labels.values())) + 1
    if known is not None and len(known) >= count:
        return known
    return tuple(str(label) for label in range(count))


def _labels(npz: Path, archive: zipfile.ZipFile, split: str) -> np.ndarray:
    """One label per image; MedMNIST's multi-label set (ChestMNIST: 14 findings a row) is refused."""
    with archive.open(f"{split}_labels.npy") as handle:
        labels = np.load(handle)
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise DatasetError(f"{npz}: {split}_labels give {labels.shape[1]} labels per image (a multi-label set); "
                           "medclf learns one label per image")
    return labels.reshape(-1).astype(np.int64)


def _image_chunks(npz: Path, archive: zipfile.ZipFile, name: str,
                  rows: int = 1000) -> Iterator[tuple[int, np.ndarray]]:
    """The array ``name`` a chunk of ``rows`` images at a time, with the index of each chunk's first."""
    with archive.open(f"{name}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
            np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if fortran or dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise DatasetError(f"{npz}: {name} is {dtype} of shape {shape}; MedMNIST's 2-D images are uint8 "
                               "(N, H, W) or (N, H, W, 3) — its 3-D volumes are not images medclf reads")
        per_image = int(np.prod(shape[1:]))
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            chunk = np.frombuffer(handle.read(count * per_image), dtype=np.uint8).reshape((count, *shape[1:]))
            yield start, chunk[..., 0] if chunk.ndim == 4 and chunk.shape[3] == 1 else chunk
