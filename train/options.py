"""The options ``medclf``'s commands share, as typer types that check what they are given before any work
starts (a folder that cannot be written, a size that is not N or HxW, a MedMNIST ``.npz`` that is no such
file), and the small parsers that turn what was typed into what the library takes: a :class:`~.pipeline.Recipe`
with the user's flags laid over a preset, a source of labels, NAME=VALUE lists.

Nothing here imports TensorFlow: ``medclf --help`` and a refused option answer at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

# Where the data is, and where the results go.
def training_data(path: Path) -> Path:
    """DATA as a folder: a MedMNIST ``.npz`` becomes the pre-split folder it stands for (``medmnist.unpacked``)."""
    from .medmnist import is_npz, unpacked

    if path.is_dir():
        return path
    if not is_npz(path):
        raise typer.BadParameter(f"{path}: not a folder of images, nor a MedMNIST .npz file")
    try:
        return unpacked(path)
    except (OSError, ValueError) as exc:  # DatasetError is a ValueError
        raise typer.BadParameter(str(exc)) from None


def scored_data(path: Path) -> Path:
    """What ``evaluate`` scores of DATA: the folder, or a MedMNIST ``.npz``'s test split."""
    from .medmnist import test_split

    return path if path.is_dir() else test_split(training_data(path))


def held_out_data(path: Path | None) -> Path | None:
    """``--test``: scored as ``evaluate`` scores its DATA."""
    return None if path is None else scored_data(path)


TrainingData = Annotated[Path, typer.Argument(exists=True, callback=training_data, help="Folder-per-class images, a folder with train/ and optional val/ and test/, or a MedMNIST .npz file (its train/val/test arrays).")]
ScoredData = Annotated[Path, typer.Argument(exists=True, callback=scored_data, help="Folder-per-class images, or a MedMNIST .npz file (its test arrays are scored).")]
ExistingDir = Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder-per-class images, or a folder with train/ and optional val/ and test/.")]


def writable_folder(path: Path | None) -> Path | None:
    """``--out`` checked before the work, not after it (a read-only mount, a file in the way)."""
    return _writable(path, folder=True)


def writable_file(path: Path | None) -> Path | None:
    return _writable(path, folder=False)


def regular_expression(text: str | None) -> str | None:
    """``text`` if Python reads it as a regular expression (a usage error naming why otherwise, not a traceback
    once the data is listed)."""
    if text is not None:
        try:
            re.compile(text)
        except re.error as exc:
            raise typer.BadParameter(f"{text!r} is not a regular expression: {exc}") from None
    return text


def _writable(path: Path | None, folder: bool) -> Path | None:
    from medclf.runtime.atomic import unwritable

    if path is not None and (problem := unwritable(path, folder)):
        raise typer.BadParameter(f"{path}: {problem}")
    return path


# Where the labels come from: the class folders unless one of these says otherwise.
NameLabelsOption = Annotated[Optional[str], typer.Option(help="Labels from file names, not folders: SEP[:POS], e.g. '.' for cat.123.jpg → cat, '_:1' for x_cat_1.png.")]
LabelsCsv = Annotated[Optional[str], typer.Option("--labels", metavar="FILE.csv[:IMAGE,LABEL]", help="Labels from a CSV beside the images, not folders: its image column (a file name, with or without extension, or an id) and label column (or one 0/1 column per class) are found by their headers unless named; a patient_id or lesion_id column keeps each patient's images on one side of the split. Images it does not list are left out.")]
LeafFolders = Annotated[bool, typer.Option("--leaf-folders", help="Labels from the folder each image sits in, at any depth (folders of one name are one class), not from the folders right below DATA: for classes filed under groups of them, e.g. lower-gi-tract/pathological-findings/polyps/ → polyps.")]
TopFoldersOption = Annotated[bool, typer.Option("--top-folders", help="Labels from the folders right below DATA as they stand, where medclf would read the classes further down (folders holding only finer classes named after them, a tree of categories, numbered parts or patients holding class folders; each said in a warning when read so): e.g. LC25000's two organs, not its five tissue types.")]


def label_source(data: Path, text: str | None, labels: str | None, leaf_folders: bool, top_folders: bool = False):
    """Where labels come from (:func:`parse_naming`); with no option given, the sheet a dataset ships beside
    images no folder labels (``labels_csv.sheet_beside``: MedMNIST's export, HAM10000, APTOS), else class folders."""
    from .labels_csv import sheet_beside

    return parse_naming(text, labels, leaf_folders, top_folders) or sheet_beside(data)


def parse_naming(text: str | None, labels: str | None = None, leaf_folders: bool = False, top_folders: bool = False):
    """'.' → NameLabels('.', 0); '_:1' → NameLabels('_', 1); ``labels`` (a CSV) → CsvLabels; ``leaf_folders`` →
    FolderLabels; ``top_folders`` → TopFolders; none → None (labels from the class folders as medclf reads
    them)."""
    from .labellers import FolderLabels, NameLabels, TopFolders
    from .labels_csv import read_labels_csv

    if (text is not None) + (labels is not None) + leaf_folders + top_folders > 1:
        raise typer.BadParameter("labels come from file names, a CSV or the folders holding the images: one of them",
                                 param_hint="--name-labels, --labels, --leaf-folders, --top-folders")
    if labels is not None:
        return read_labels_csv(labels)
    if leaf_folders:
        return FolderLabels()
    if top_folders:
        return TopFolders()
    if text is None:
        return None
    if not text:
        raise typer.BadParameter("give a separator, optionally :POSITION", param_hint="--name-labels")
    head, _, tail = text.rpartition(":")
    if head and tail.lstrip("-").isdigit():
        return NameLabels(head, int(tail))
    return NameLabels(text, 0)


# Recipe options, shared by train and crossval. None = not given: the preset's value, else the library default.
Preset = Annotated[Optional[str], typer.Option(help="Measured recipe for a seed dataset: blood-cells, chest-xray, cataract; chest-xray-pair (train only) trains two models and averages them. Flags given too override it (each member's).")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture: mobilenet_v2 (default), mobilenet_025, two_backbones, small_cnn, squeezenet.")]
ImageSize = Annotated[Optional[str], typer.Option(help="Input size, N or HxW (e.g. 240x320); default per architecture.")]
Epochs = Annotated[Optional[int], typer.Option(min=1, help="Epochs end to end, or of fine-tuning after the head stage [30].")]
HeadEpochs = Annotated[Optional[int], typer.Option(min=1, help="Transfer models: epochs for the new head alone [10].")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="[32]")]
LearningRate = Annotated[Optional[float], typer.Option(min=1e-9, help="Adam's rate (above 0); default per architecture.")]
ValSplit = Annotated[Optional[float], typer.Option(min=0.01, max=0.9, help="Held-out fraction when there is no val/ folder [0.15].")]
Grey = Annotated[Optional[bool], typer.Option("--grey/--rgb", help="Single-channel or colour input (default: colour).", show_default=False)]
Crop = Annotated[Optional[str], typer.Option(help="Where the crop window sits: centre, or stain (the nucleus of a stained smear).")]
CropFraction = Annotated[Optional[float], typer.Option(min=0.05, max=1.0, help="Crop window side as a fraction of the shorter image side [1 = no crop].")]
AugmentViews = Annotated[Optional[int], typer.Option(min=0, help="Augmented copies per image for cached-feature training [2].")]
Pretrained = Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights, read offline from KERAS_HOME (default: pretrained).", show_default=False)]
Clahe = Annotated[Optional[bool], typer.Option("--clahe/--no-clahe", help="Equalise local contrast (CLAHE), e.g. for radiographs; served the same way (default: off).", show_default=False)]
GroupPattern = Annotated[Optional[str], typer.Option(callback=regular_expression, help="Regex on file names whose match (first group) names a patient or source; a group never straddles a split.")]
Augmentation = Annotated[Optional[str], typer.Option(help="Augmentation policy: default (mirror, small turns, zoom, brightness), microscopy (any flip or turn, stain colour jitter) or radiograph (strong zoom-in and shifts, exposure and contrast).")]
GroupCopies = Annotated[Optional[bool], typer.Option("--group-copies/--no-group-copies", help="Keep augmented copies of one source image (near-identical colour histograms) on one side of a split (default: on when the data looks shipped pre-augmented; images filed in sub-folders of their class folder (patients, studies) are kept together by sub-folder, and else files whose names agree up to the number before their own (person12_bacteria_3.jpeg and person12_virus_7.jpeg: patient person12), unless --no-group-copies).", show_default=False)]
Schedule = Annotated[Optional[str], typer.Option(help="Learning-rate schedule: plateau (x0.3 when validation loss stalls) or step (halve every 5 epochs) (default: plateau).")]
FreezeUntil = Annotated[Optional[str], typer.Option(help="Transfer models: the last layer kept frozen; the layers above it are fine-tuned (default per architecture, e.g. block_12_add; pool: the whole backbone, only the head is trained).")]
Wise = Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Transfer models: end on this mix of fine-tuned and linear-probe (ImageNet top + trained head) weights, WiSE-FT; lower is more robust to images from other sites, 1 is fully fine-tuned (default: the most robust of 0.5, 0.75, 1 within 0.01 validation AUC of the best).")]
TimeBudgetOption = Annotated[Optional[float], typer.Option("--time-budget", min=0, help="Minutes of wall clock for the whole run; augmented views and epochs that would not fit are dropped, with a warning (0: no limit) [28].")]
Seed = Annotated[Optional[int], typer.Option(help="[0]")]
Distribute = Annotated[Optional[str], typer.Option(help="auto: mirror training over the machine's GPUs where it has two or more (tf.distribute; the batch size stays the global batch); off: one device (default: auto).")]
TargetSensitivity = Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Binary tasks: pick the threshold reaching this sensitivity on validation data (default: Youden's J).")]


def tta_views(value: str | None) -> str | None:
    """``--tta``: one of the runtime's kinds of test-time views, checked before any work starts."""
    if value is None:
        return None
    from medclf.runtime.tta import checked

    try:
        return checked(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


Tta = Annotated[Optional[str], typer.Option("--tta", callback=tta_views, help="Score the probabilities averaged over each image's mirror image (flip) or every mirror and quarter turn (dihedral), as medclf-run --tta serves them; the default output folder gets -tta-<views> so the plain scores stay beside.")]


def recipe_of(preset: str | None, options: dict):
    """The preset (or the defaults) with every option the user gave on the command line laid over it."""
    from .pipeline import Recipe
    from .presets import get_preset

    return _overlaid(get_preset(preset) if preset else Recipe(), options)


def recipes_of(preset: str | None, options: dict) -> list:
    """:func:`recipe_of`, for a preset that may train several models (an ensemble preset): the options over each."""
    from .presets import get_members

    return [_overlaid(member, options) for member in get_members(preset)] if preset else [recipe_of(None, options)]


def _overlaid(base, options: dict):
    """``base`` with every option the user gave on the command line laid over it."""
    from .distribute import DISTRIBUTE
    from .fit import AUGMENTATIONS, SCHEDULES

    given = {name: options.get(name) for name in RECIPE_OPTIONS + FIT_OPTIONS}
    for option, known in (("distribute", DISTRIBUTE), ("schedule", SCHEDULES), ("augmentation", AUGMENTATIONS)):
        if given[option] not in (None, *known):  # said before the data is read, not after
            raise ValueError(f"--{option} {given[option]}: choose from {', '.join(known)}")
    if given["image_size"] is not None:
        given["image_size"] = parse_size(given["image_size"])
    if given["grey"] is not None:
        given["color"] = "grey" if given["grey"] else "rgb"
    fit = dataclasses.replace(base.fit, **{k: given[k] for k in FIT_OPTIONS if given[k] is not None})
    if given["time_budget"] == 0:
        fit = dataclasses.replace(fit, time_budget=None)
    fields = {k: given[k] for k in RECIPE_OPTIONS if given[k] is not None and k != "grey"}
    if fields.get("arch", base.arch) != base.arch:  # a preset's layer to fine-tune from is its architecture's
        fields.setdefault("freeze_until", None)
    recipe = dataclasses.replace(base, fit=fit, **fields)
    if recipe.image_size is not None:  # said before the data is read
        _check_size(recipe.image_size, recipe.architecture())
    cut = recipe.architecture().frozen_until if given["wise"] is not None else "a layer"
    if cut in (None, "pool"):  # else the option would be taken and ignored
        how = "trains from scratch" if cut is None else "keeps its whole backbone frozen"
        raise ValueError(f"--wise mixes fine-tuned and linear-probe weights, which only a backbone fine-tuned in two "
                         f"stages has: {recipe.arch} {how}")
    if fields.get("color", base.color) == "grey" and fit.augmentation == "microscopy":  # said now, not mid-run
        raise ValueError("--augmentation microscopy jitters stain colours, which grey images do not have: use "
                         "default or radiograph with --grey")
    return recipe


def _check_size(size: int | tuple[int, int], architecture) -> None:
    """A ValueError where ``architecture`` cannot learn at ``size`` (:attr:`Architecture.min_size`)."""
    side = min(size) if isinstance(size, tuple) else size
    if side < architecture.min_size:
        raise ValueError(f"--image-size {size if isinstance(size, int) else 'x'.join(map(str, size))}: "
                         f"{architecture.name} needs {architecture.min_size} px a side or more (its ImageNet "
                         f"features are all but zero below, and a model of them calls every image alike); leave "
                         f"--image-size out (small images are enlarged to {architecture.default_size}) or train "
                         f"small_cnn or squeezenet at this size")


RECIPE_OPTIONS = ("arch", "image_size", "grey", "color", "crop", "crop_fraction", "clahe", "pretrained", "val_split",
                  "group_pattern", "group_copies", "target_sensitivity", "freeze_until")
FIT_OPTIONS = ("epochs", "head_epochs", "batch_size", "learning_rate", "augment_views", "augmentation", "schedule",
               "wise", "time_budget", "seed", "distribute")


def parse_size(text: str) -> int | tuple[int, int]:
    """'160' → 160; '240x320' → (240, 320) (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 16:
        raise typer.BadParameter(f"{text!r}: give N or HxW, each at least 16", param_hint="--image-size")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


# Lists typed as NAME=VALUE, and the export's precisions and batch profile.
def parse_shares(texts: list[str] | None) -> dict[str, float] | None:
    """['PNEUMONIA=0.1'] or ['A=10%,B=0.3'] → {'PNEUMONIA': 0.1} / {'A': 0.1, 'B': 0.3}; the range is the
    library's."""
    def share(value: str) -> float:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)

    return _assignments(texts, share, "--prevalence", "CLASS=SHARE, e.g. PNEUMONIA=0.1 or PNEUMONIA=10%")


def _assignments(texts: list[str] | None, parse: Callable[[str], Any], option: str, form: str) -> dict | None:
    """Repeated or comma-separated NAME=VALUE items as {NAME: parse(VALUE)}; one that is not is a usage error
    naming ``form``. None when none were given."""
    if not texts:
        return None
    parsed = {}
    for item in (part.strip() for text in texts for part in text.split(",") if part.strip()):
        name, _, value = item.rpartition("=")
        try:
            parsed[name.strip()] = parse(value.strip())
        except ValueError:
            name = ""
        if not name.strip():
            raise typer.BadParameter(f"{item!r}: give {form}", param_hint=option)
    return parsed


def parse_float_counts(texts: list[str] | None) -> dict[str, int] | None:
    """['int8=3'] or ['fp16=4,int8=3'] → {'int8': 3} / {'fp16': 4, 'int8': 3}; which precisions take one is the
    library's to say."""
    def count(value: str) -> int:
        if not value.isdigit():
            raise ValueError(value)
        return int(value)

    counts = _assignments(texts, count, "--float-convs", "PRECISION=N, e.g. int8=3")
    return None if counts is None else {name.lower(): count for name, count in counts.items()}


def parse_precisions(text: str) -> tuple[str, ...]:
    """'fp32, FP16' → ('fp32', 'fp16'); the library says which names it knows."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def parse_profile(text: str):
    """'1,16,64' → BatchProfile(1, 16, 64)."""
    from medclf.runtime.tensorrt_engine import BatchProfile

    parts = text.split(",")
    if len(parts) != 3:  # '64' alone would have been taken as MIN with the defaults' OPT and MAX
        raise typer.BadParameter(f"{text!r}: give three batch sizes, MIN,OPT,MAX (e.g. 1,16,64)",
                                 param_hint="--batch-profile")
    try:
        return BatchProfile(*(int(part) for part in parts))
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r}: give MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX ({exc})",
                                 param_hint="--batch-profile") from None
