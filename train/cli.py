"""``medclf``: the toolchain CLI — train, crossval, evaluate, explain, augment, export, benchmark, demo.
Thin commands: validate, call the library.

TensorFlow is imported inside the commands that need it, so ``medclf --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from .quiet_tensorflow import import_tensorflow

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Medical image classification: folder-per-class data → verified ONNX → medclf-run.")
console = Console(soft_wrap=True)  # paths and metrics stay on one line, in terminals and logs alike
errors = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped


def error(text: str) -> None:
    """One red 'error:' line on stderr; the text is printed as is (a path like scan[1].png is not markup)."""
    errors.print(f"[red]error[/red]: {escape(text)}", highlight=False)

TargetSensitivity = Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Binary tasks: pick the threshold reaching this sensitivity on validation data (default: Youden's J).")]
NameLabelsOption = Annotated[Optional[str], typer.Option(help="Labels from file names, not folders: SEP[:POS], e.g. '.' for cat.123.jpg → cat, '_:1' for x_cat_1.png.")]
LabelsCsv = Annotated[Optional[str], typer.Option("--labels", metavar="FILE.csv[:IMAGE,LABEL]", help="Labels from a CSV beside the images, not folders: its image column (a file name, with or without extension, or an id) and label column (or one 0/1 column per class) are found by their headers unless named; a patient_id or lesion_id column keeps each patient's images on one side of the split. Images it does not list are left out.")]
LeafFolders = Annotated[bool, typer.Option("--leaf-folders", help="Labels from the folder each image sits in, at any depth (folders of one name are one class), not from the folders right below DATA: for classes filed under groups of them, e.g. lower-gi-tract/pathological-findings/polyps/ → polyps.")]
ExistingDir = Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder-per-class images, or a folder with train/ and optional val/ and test/.")]


def _training_data(path: Path) -> Path:
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


def _scored_data(path: Path) -> Path:
    """What ``evaluate`` scores of DATA: the folder, or a MedMNIST ``.npz``'s test split."""
    from .medmnist import test_split

    return path if path.is_dir() else test_split(_training_data(path))


def _test_data(path: Path | None) -> Path | None:
    """``--test``: scored as ``evaluate`` scores its DATA."""
    return None if path is None else _scored_data(path)


TrainingData = Annotated[Path, typer.Argument(exists=True, callback=_training_data, help="Folder-per-class images, a folder with train/ and optional val/ and test/, or a MedMNIST .npz file (its train/val/test arrays).")]
ScoredData = Annotated[Path, typer.Argument(exists=True, callback=_scored_data, help="Folder-per-class images, or a MedMNIST .npz file (its test arrays are scored).")]


# Recipe options, shared by train and crossval. None = not given: the preset's value, else the library default.
Preset = Annotated[Optional[str], typer.Option(help="Measured recipe for a seed dataset: blood-cells, chest-xray, cataract; chest-xray-pair (train only) trains two models and averages them. Flags given too override it (each member's).")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture: mobilenet_v2 (default), mobilenet_025, two_backbones, small_cnn, squeezenet.")]
ImageSize = Annotated[Optional[str], typer.Option(help="Input size, N or HxW (e.g. 240x320); default per architecture.")]
Epochs = Annotated[Optional[int], typer.Option(min=1, help="Epochs end to end, or of fine-tuning after the head stage [30].")]
HeadEpochs = Annotated[Optional[int], typer.Option(min=1, help="Transfer models: epochs for the new head alone [10].")]
BatchSize = Annotated[Optional[int], typer.Option(min=1, help="[32]")]
LearningRate = Annotated[Optional[float], typer.Option(min=0.0, help="Adam's rate; default per architecture.")]
ValSplit = Annotated[Optional[float], typer.Option(min=0.01, max=0.9, help="Held-out fraction when there is no val/ folder [0.15].")]
Grey = Annotated[Optional[bool], typer.Option("--grey/--rgb", help="Single-channel or colour input (default: colour).", show_default=False)]
Crop = Annotated[Optional[str], typer.Option(help="Where the crop window sits: centre, or stain (the nucleus of a stained smear).")]
CropFraction = Annotated[Optional[float], typer.Option(min=0.05, max=1.0, help="Crop window side as a fraction of the shorter image side [1 = no crop].")]
AugmentViews = Annotated[Optional[int], typer.Option(min=0, help="Augmented copies per image for cached-feature training [2].")]
Pretrained = Annotated[Optional[bool], typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights, read offline from KERAS_HOME (default: pretrained).", show_default=False)]
Clahe = Annotated[Optional[bool], typer.Option("--clahe/--no-clahe", help="Equalise local contrast (CLAHE), e.g. for radiographs; served the same way (default: off).", show_default=False)]
GroupPattern = Annotated[Optional[str], typer.Option(help="Regex on file names whose match (first group) names a patient or source; a group never straddles a split.")]
Augmentation = Annotated[Optional[str], typer.Option(help="Augmentation policy: default (mirror, small turns, zoom, brightness), microscopy (any flip or turn, stain colour jitter) or radiograph (strong zoom-in and shifts, exposure and contrast).")]
GroupCopies = Annotated[Optional[bool], typer.Option("--group-copies/--no-group-copies", help="Keep augmented copies of one source image (near-identical colour histograms) on one side of a split (default: on when the data looks shipped pre-augmented; images filed in sub-folders of their class folder (patients, studies) are kept together by sub-folder, and else files whose names agree up to the number before their own (person12_bacteria_3.jpeg and person12_virus_7.jpeg: patient person12), unless --no-group-copies).", show_default=False)]
Schedule = Annotated[Optional[str], typer.Option(help="Learning-rate schedule: plateau (x0.3 when validation loss stalls) or step (halve every 5 epochs) (default: plateau).")]
FreezeUntil = Annotated[Optional[str], typer.Option(help="Transfer models: the last layer kept frozen; the layers above it are fine-tuned (default per architecture, e.g. block_12_add; pool: the whole backbone, only the head is trained).")]
Wise = Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Transfer models: end on this mix of fine-tuned and linear-probe (ImageNet top + trained head) weights, WiSE-FT; lower is more robust to images from other sites, 1 is fully fine-tuned (default: the most robust of 0.5, 0.75, 1 within 0.01 validation AUC of the best).")]
TimeBudgetOption = Annotated[Optional[float], typer.Option("--time-budget", min=0, help="Minutes of wall clock for the whole run; augmented views and epochs that would not fit are dropped, with a warning (0: no limit) [28].")]
Seed = Annotated[Optional[int], typer.Option(help="[0]")]
Distribute = Annotated[Optional[str], typer.Option(help="auto: mirror training over the machine's GPUs where it has two or more (tf.distribute; the batch size stays the global batch); off: one device (default: auto).")]


@app.command()
def train(
    data: TrainingData,
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="Run directory to write.")] = Path("runs/latest"),
    preset: Preset = None, arch: Arch = None, image_size: ImageSize = None, epochs: Epochs = None,
    head_epochs: HeadEpochs = None, batch_size: BatchSize = None, learning_rate: LearningRate = None,
    val_split: ValSplit = None,
    test: Annotated[Optional[Path], typer.Option(exists=True, callback=_test_data, help="Test folder, or a MedMNIST .npz file (its test arrays), scored once at the end.")] = None,
    grey: Grey = None, crop: Crop = None, crop_fraction: CropFraction = None, augment_views: AugmentViews = None,
    pretrained: Pretrained = None, clahe: Clahe = None, group_pattern: GroupPattern = None,
    group_copies: GroupCopies = None, freeze_until: FreezeUntil = None, augmentation: Augmentation = None,
    schedule: Schedule = None, target_sensitivity: TargetSensitivity = None, name_labels: NameLabelsOption = None,
    labels: LabelsCsv = None, leaf_folders: LeafFolders = False, limit_per_class: Annotated[Optional[int], typer.Option(min=1, help="Train on at most N images per class.")] = None,
    wise: Wise = None, time_budget: TimeBudgetOption = None, seed: Seed = None, distribute: Distribute = None,
) -> None:
    """Train a classifier on DATA and write RUN_DIR: model.keras, labels.json, preprocess.json, decision.json
    (binary), metrics.json, history.csv, curves.png, confusion_matrix.png, roc.png, calibration.png."""
    options = dict(locals())
    import_tensorflow()
    from medclf.rundir import RunDir

    from .ensemble import train_ensemble
    from .pipeline import train as run_training

    recipes = _library_call(lambda: _recipes(preset, options))
    naming = _library_call(lambda: _naming(data, name_labels, labels, leaf_folders))
    if len(recipes) > 1:  # an ensemble preset: its members trained in turn, then averaged into RUN_DIR
        result = _library_call(lambda: train_ensemble(data, out, recipes, test, naming, limit_per_class))
        for member in result.metrics["training"]["members"]:
            console.print(f"member {Path(member).name}:")
            _print_metrics(RunDir(Path(member)).metrics)
        console.print("the members averaged:")
    else:
        result = _library_call(lambda: run_training(data, out, recipes[0], test=test, naming=naming,
                                                    limit_per_class=limit_per_class))
    _print_metrics(result.metrics)
    if (temperature := result.metrics["training"].get("temperature")) is not None:
        console.print(f"probabilities calibrated on validation: the model divides its logits by {temperature:.3g}")
    _print_unreadable(result.metrics["training"].get("unreadable", {}))
    console.print(f"wrote {result.run_dir} in {result.seconds:.0f} s")


def _print_unreadable(unreadable: dict[str, int]) -> None:
    """One line at the end for files left out along the way (each was named as it was met, maybe far above)."""
    if total := sum(unreadable.values()):
        where = ", ".join(f"{n} {split}" for split, n in unreadable.items() if n)
        console.print(f"{total} file{'s' if total > 1 else ''} could not be read and {'were' if total > 1 else 'was'} "
                      f"left out ({where}): each is named above")


@app.command()
def crossval(
    data: TrainingData,
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="Folder for one run directory per fold and crossval.json.")] = Path("runs/crossval"),
    folds: Annotated[int, typer.Option(min=2, help="Number of folds.")] = 5,
    preset: Preset = None, arch: Arch = None, image_size: ImageSize = None, epochs: Epochs = None,
    head_epochs: HeadEpochs = None, batch_size: BatchSize = None, learning_rate: LearningRate = None,
    val_split: ValSplit = None, grey: Grey = None, crop: Crop = None, crop_fraction: CropFraction = None,
    augment_views: AugmentViews = None, pretrained: Pretrained = None, clahe: Clahe = None,
    group_pattern: GroupPattern = None, group_copies: GroupCopies = None, freeze_until: FreezeUntil = None,
    augmentation: Augmentation = None, schedule: Schedule = None, target_sensitivity: TargetSensitivity = None,
    name_labels: NameLabelsOption = None, labels: LabelsCsv = None, leaf_folders: LeafFolders = False,
    wise: Wise = None, time_budget: TimeBudgetOption = None, seed: Seed = None, distribute: Distribute = None,
) -> None:
    """K-fold cross-validation for small datasets: each fold's model scored on its held-out fold; mean ± spread."""
    options = dict(locals())
    import_tensorflow()
    from .crossval import REPORTED, cross_validate

    recipe = _library_call(lambda: _recipe(preset, options))
    summary = _library_call(lambda: cross_validate(data, out, recipe, folds,
                                                              _naming(data, name_labels, labels, leaf_folders)))
    for name in REPORTED:
        if summary[name] is not None:
            console.print(f"{name}: {summary[name]['mean']:.3f} ± {summary[name]['std']:.3f} "
                          f"over {summary[name]['folds']} folds")
    console.print(f"wrote {out}/crossval.json")


def _home_of(model: Path) -> Path:
    """Where a command writes what it makes of MODEL: beside it, except for the models packaged with medclf
    (inside the installed package, perhaps read-only, and not the user's to add to): the current folder."""
    from medclf.runtime import DEFAULT_MODEL

    packaged = DEFAULT_MODEL.parent.parent.resolve()
    return Path(".") if model.resolve().is_relative_to(packaged) else model.parent


def _recipe(preset: str | None, options: dict):
    """The preset (or the defaults) with every option the user gave on the command line laid over it."""
    from .pipeline import Recipe
    from .presets import get_preset

    return _overlaid(get_preset(preset) if preset else Recipe(), options)


def _recipes(preset: str | None, options: dict) -> list:
    """:func:`_recipe`, for a preset that may train several models (an ensemble preset): the options over each."""
    from .presets import get_members

    return [_overlaid(member, options) for member in get_members(preset)] if preset else [_recipe(None, options)]


def _overlaid(base, options: dict):
    """``base`` with every option the user gave on the command line laid over it."""
    from .distribute import DISTRIBUTE

    given = {name: options.get(name) for name in RECIPE_OPTIONS + FIT_OPTIONS}
    if given["distribute"] not in (None, *DISTRIBUTE):  # said before the data is read, not after
        raise ValueError(f"--distribute {given['distribute']}: choose from {', '.join(DISTRIBUTE)}")
    if given["image_size"] is not None:
        given["image_size"] = _parse_size(given["image_size"])
    if given["grey"] is not None:
        given["color"] = "grey" if given["grey"] else "rgb"
    fit = dataclasses.replace(base.fit, **{k: given[k] for k in FIT_OPTIONS if given[k] is not None})
    if given["time_budget"] == 0:
        fit = dataclasses.replace(fit, time_budget=None)
    fields = {k: given[k] for k in RECIPE_OPTIONS if given[k] is not None and k != "grey"}
    return dataclasses.replace(base, fit=fit, **fields)


RECIPE_OPTIONS = ("arch", "image_size", "grey", "color", "crop", "crop_fraction", "clahe", "pretrained", "val_split",
                  "group_pattern", "group_copies", "target_sensitivity", "freeze_until")
FIT_OPTIONS = ("epochs", "head_epochs", "batch_size", "learning_rate", "augment_views", "augmentation", "schedule",
               "wise", "time_budget", "seed", "distribute")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras, or an exported .onnx file.")],
    data: ScoredData,
    out: Annotated[Optional[Path], typer.Option("--out", callback=_writable_folder, help="Folder for metrics.json, confusion_matrix.png, roc.png, calibration.png; default RUN_DIR/evaluation-<DATA name> (./evaluation-<DATA name> for the packaged model).")] = None,
    target_sensitivity: TargetSensitivity = None,
    name_labels: NameLabelsOption = None,
    labels: LabelsCsv = None,
    leaf_folders: LeafFolders = False,
    group_pattern: GroupPattern = None,
    group_copies: GroupCopies = None,
    prevalence: Annotated[Optional[list[str]], typer.Option(metavar="CLASS=SHARE", help="Also score the calls as they would do where cases come in these proportions, e.g. PNEUMONIA=10% (DATA collected so many of each class): accuracy, how often each call is right (a binary model's PPV and NPV), calibration error, log loss.")] = None,
) -> None:
    """Score MODEL (Keras, or exported ONNX through the runtime) on a folder-per-class DATA set: accuracy, ROC
    AUC, per-class scores, calibration, and for binary tasks sensitivity/specificity at the model's threshold.
    Where a patient's files (--group-pattern, sub-folders, names numbered within a patient) or augmented copies of
    one image (looked for) belong together, also accuracy counted once per patient or source image."""
    import_tensorflow()
    from medclf import rundir

    from .medmnist import dataset_name
    from .pipeline import evaluate_run

    shares = _shares(prevalence)
    out = out or _home_of(model) / rundir.EVALUATION.format(data=dataset_name(data))
    metrics = _library_call(lambda: evaluate_run(model, data, out, target_sensitivity,
                                                 naming=_naming(data, name_labels, labels, leaf_folders),
                                                 group_pattern=group_pattern,
                                                 group_copies=group_copies, prevalence=shares))
    _print_metrics({"evaluation": metrics})
    if (fp32 := metrics.get("agreement_with_fp32")) is not None:
        console.print(_agreement_line(fp32, model.name, metrics["accuracy"]), highlight=False)
    console.print(f"wrote {out}/metrics.json, confusion_matrix.png, roc.png, calibration.png")


def _agreement_line(fp32: dict, name: str, accuracy: float) -> str:
    """'evaluation: model.int8.onnx makes the same calls as model.onnx on 97.3% of these images (17 of 624 changed:
    NORMAL → PNEUMONIA 17); accuracy 0.822 here, model.onnx's 0.843 — below the 99.0% ...'."""
    reference = Path(fp32["file"]).name
    moves = ", ".join(f"{move} {count}" for move, count in fp32["moves"].items())
    line = (f"evaluation: {name} makes the same calls as {reference} on {fp32['agreement']:.1%} of these images "
            f"({fp32['changed']} of {fp32['images']} changed{': ' + moves if moves else ''}); accuracy "
            f"{accuracy:.3f} here, {reference}'s {fp32['fp32_accuracy']:.3f}")
    if fp32["within_tolerance"]:
        return line
    return f"{line} — below the {fp32['tolerance']:.1%} its export was verified to on the training site's images"


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(exists=True, file_okay=False, help="Two or more RUN_DIRs from medclf train that held out the same validation images (same --seed and --group-pattern).")],
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="The ensemble's RUN_DIR (medclf export takes its model.keras).")],
    test: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="Also score it on this held-out folder.")] = None,
    target_sensitivity: TargetSensitivity = None,
) -> None:
    """Average the RUNS' models into one (the largest input size; smaller members resize inside the graph), with
    its threshold chosen on their common validation images: models of different kinds err on different images."""
    import_tensorflow()
    from .ensemble import ensemble_runs

    if len(runs) < 2:
        raise typer.BadParameter("give two or more run directories", param_hint="RUNS")
    metrics = _library_call(lambda: ensemble_runs(runs, out, test, target_sensitivity))
    _print_metrics(metrics)
    console.print(f"wrote {out}/model.keras and its run files")


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An exported .onnx model.")],
    data: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The site's own labelled images, one folder per class (at least 30 of each; a patient or copies of one image count once).")],
    out: Annotated[Optional[Path], typer.Option("--out", callback=_writable_file, help="The calibrated copy; default MODEL's name with .site before .onnx.")] = None,
    target_sensitivity: Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Binary models: pick the threshold reaching this sensitivity on DATA (default: Youden's J).")] = None,
    name_labels: NameLabelsOption = None,
    labels: LabelsCsv = None,
    leaf_folders: LeafFolders = False,
    group_pattern: GroupPattern = None,
    group_copies: GroupCopies = None,
    class_bias: Annotated[bool, typer.Option("--class-bias/--no-class-bias", help="Fit a bias per class: the site's prevalence, taken from the proportions DATA holds. Off (temperature alone) when DATA was collected to hold so many of each class rather than as cases come and the site's prevalence is not known (else --prevalence).")] = True,
    prevalence: Annotated[Optional[list[str]], typer.Option(metavar="CLASS=SHARE", help="The site's prevalence when DATA was collected in other proportions, e.g. PNEUMONIA=0.1 or PNEUMONIA=10% (repeat or comma-separate for more classes; the rest share what is left as DATA holds them): the bias and every reported accuracy, calibration error and log loss are taken to it.")] = None,
) -> None:
    """Fit a model's temperature and a bias per class (the site's own prevalence), and a binary model's decision
    threshold, on a site's own labelled images and write them into a copy of the ONNX file, so medclf-run answers
    by them. Prints the site's metrics as the model stands and an honest estimate of the new ones (fitted on half
    the images, scored on the other half), and draws the site's reliability curves before and after beside the
    copy (.png)."""
    from medclf.runtime.atomic import write_json

    import_tensorflow()
    from .calibrate import calibrate_site, write_calibrated

    shares = _shares(prevalence)
    out = out or _home_of(model) / f"{model.stem}.site{model.suffix}"
    picture = out.with_suffix(".png")
    site = _library_call(lambda: calibrate_site(model, data, target_sensitivity,
                                                _naming(data, name_labels, labels, leaf_folders),
                                                group_pattern, group_copies, picture=picture,
                                                class_bias=class_bias, prevalence=shares))
    record = site.record(data.resolve().name)
    _library_call(lambda: write_calibrated(model, out, site, record))
    write_json(out.with_suffix(".json"), record)
    if site.prevalence is not None:
        stated, held = (_percentages(site.prevalence[key]) for key in ("stated", "images"))
        console.print(f"at the stated prevalence ({stated}; the site images hold {held}), each image weighted "
                      "by the ratio:")
    console.print(f"as the model stands, {site.images} site images: {_site_metrics(site.before)}")
    scaling = [f"temperature {site.temperature:.3g}, bias "
               + " ".join(f"{name} {value:+.2f}" for name, value in site.bias.items())] if site.bias else []
    new = ", ".join((scaling or ["no temperature or bias (the site's images cannot tell them)"])
                    + ([f"threshold {site.decision.threshold:.3g}"] if site.decision is not None else []))
    if site.estimate is None and picture.exists():  # an earlier calibration's, which this one did not redraw
        picture.unlink()
        errors.print(f"removed {escape(str(picture))}: the picture of the calibration this one replaced",
                     highlight=False)
    if site.estimate is None:
        console.print(f"new: {new}; too few images to estimate their worth (60 independent ones of each class let "
                      "them be fitted on one half and scored on the other)")
    else:
        console.print(f"new: {new}: {_site_metrics(site.estimate)} (fitted on half the site images, scored on the "
                      f"other half, {site.estimate['splits']} splits)")
    written = [out, out.with_suffix(".json")] + ([picture] if site.estimate is not None else [])
    console.print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}"
                  + (" (reliability before and after)" if site.estimate is not None else ""))


def _shares(texts: list[str] | None) -> dict[str, float] | None:
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


def _percentages(shares: dict[str, float]) -> str:
    """{'NORMAL': 0.9, 'PNEUMONIA': 0.1} → 'NORMAL 90.0%, PNEUMONIA 10.0%'."""
    return ", ".join(f"{name} {share:.1%}" for name, share in shares.items())


def _site_metrics(summary: dict) -> str:
    """'threshold 0.622, accuracy 0.899, ..., calibration error 0.033, log loss 0.218', with ± spreads for an
    estimate, and the model as it stands on the estimate's halves beside them."""
    def number(value: float | dict) -> str:
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if isinstance(value, dict) else f"{value:.3f}"

    shown = [f"threshold {summary['threshold']:.3g}"] if summary.get("threshold") is not None else []
    shown += [f"{key} {number(summary[key])}" for key in ("accuracy", "sensitivity", "specificity") if key in summary]
    for key, name in (("expected_calibration_error", "calibration error"), ("log_loss", "log loss")):
        shown.append(f"{name} {number(summary[key])}")
        if f"{key}_before" in summary:
            shown[-1] += f" (as the model stands on the same halves: {number(summary[f'{key}_before'])})"
    return ", ".join(shown)


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras from medclf train.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="Folder for the heatmap overlays.")] = Path("gradcam"),
    target: Annotated[Optional[str], typer.Option("--class", help="Explain this class (default: the model's call).")] = None,
    layer: Annotated[Optional[str], typer.Option(help="Feature-map layer (default: the last convolutional one).")] = None,
) -> None:
    """Grad-CAM heatmaps over each image, as the model saw it: OUT/<name>-<path hash>.<class>.gradcam.png."""
    from medclf.runtime.inputs import expand_inputs

    import_tensorflow()
    from .explain import explain_files

    failed = 0
    for item in _library_call(lambda: explain_files(model, list(expand_inputs(inputs)), out, target, layer)):
        if item.error is not None:
            failed += 1
            error(f"{item.path}: {item.error}")
        else:
            console.print(f"{item.path}: {item.label} {item.probability:.3f} → {item.heatmap}", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def augment(
    data: ExistingDir,
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="Folder for the copies, mirroring DATA's sub-folders.")],
    copies: Annotated[int, typer.Option(min=1, help="Augmented copies per image.")] = 5,
    augmentation: Annotated[str, typer.Option(help="Policy: default or microscopy (as in medclf train).")] = "default",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write augmented copies of every image to disk, of train/ alone where DATA is split (training augments on
    the fly and does not need this)."""
    import_tensorflow()
    from .augment import augment_folder

    done = failed = 0
    for item in _library_call(lambda: augment_folder(data, out, copies, seed, augmentation)):
        if item.error is not None:
            failed += 1
            error(f"{item.source}: {item.error}")
        done += len(item.written)
    console.print(f"wrote {done} images to {out}" + (f"; {failed} files could not be read" if failed else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
def export(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras from medclf train.")],
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="Folder for the ONNX files and export_report.json.")] = Path("exported"),
    precision: Annotated[str, typer.Option(help="Comma-separated: fp32, fp16, int8. FP32 is always made; the others derive from it. FP16 is verified as a GPU computes it (float16 activations), the others as this CPU does.")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="FP16 and INT8: real training images to calibrate on (FP16 rounds its weights to keep their outputs on them); default: the run's training split.")] = None,
    verify_data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="Images to verify on; default: the run's validation split.")] = None,
    verify_images: Annotated[int, typer.Option(min=1, help="At most this many verification images, evenly spread (99.9% agreement, FP16's tolerance, needs 1,000 to mean anything).")] = 1024,
    engine: Annotated[bool, typer.Option("--engine", help="Also build and verify a TensorRT engine per precision (needs an NVIDIA GPU and the medclf\\[gpu] extra).")] = False,
    batch_profile: Annotated[str, typer.Option(help="Engine and Triton batch sizes: MIN,OPT,MAX.")] = "1,16,64",
    triton: Annotated[Optional[Path], typer.Option(file_okay=False, help="Also write a Triton Inference Server model repository here.")] = None,
    cam: Annotated[bool, typer.Option("--cam", help="Add a second output, class activation maps, so the runtime can draw heatmaps without TensorFlow.")] = False,
    float_convs: Annotated[Optional[list[str]], typer.Option(metavar="PRECISION=N", help="Keep the first N convolutions float32 in that file: for INT8 instead of searching for the fewest that pass with a margin (e.g. int8=3 for a faster INT8), for FP16 instead of none (repeat or comma-separate for both); verification still decides.")] = None,
) -> None:
    """Export MODEL to ONNX per precision (uint8 in, probabilities out, labels and preprocessing inside), each
    verified against Keras before it is written under its final name."""
    import_tensorflow()
    from medclf.export.pipeline import export_run, failed_files
    from medclf.export.report import computed_lines, export_table, search_lines

    profile = _parse_profile(batch_profile)
    counts = _float_counts(float_convs)
    report = _library_call(lambda: export_run(model, out, _parse_precisions(precision), verify_data=verify_data,
                                              calibration_data=calibration, max_images=verify_images,
                                              engine=profile if engine else None, triton=triton, cam=cam,
                                              strict=False, float_convs=counts))
    console.print(export_table(report))
    for line in search_lines(report) + computed_lines(report):
        console.print(line, highlight=False)
    for path in report.get("triton", []):
        console.print(f"Triton model: {path}")
    for path in report["removed"]:
        console.print(f"removed {path}: an earlier export of another model, which would be served as this one")
    for file, reasons in failed_files(report):
        error(f"{file} not written: {'; '.join(reasons)}")
    if not report["passed"]:
        raise typer.Exit(1)


def _float_counts(texts: list[str] | None) -> dict[str, int] | None:
    """['int8=3'] or ['fp16=4,int8=3'] → {'int8': 3} / {'fp16': 4, 'int8': 3}; which precisions take one is the
    library's to say."""
    def count(value: str) -> int:
        if not value.isdigit():
            raise ValueError(value)
        return int(value)

    counts = _assignments(texts, count, "--float-convs", "PRECISION=N, e.g. int8=3")
    return None if counts is None else {name.lower(): count for name, count in counts.items()}


def _parse_precisions(text: str) -> tuple[str, ...]:
    """'fp32, FP16' → ('fp32', 'fp16'); the library says which names it knows."""
    return tuple(part.strip().lower() for part in text.split(",") if part.strip())


def _parse_profile(text: str):
    """'1,16,64' → BatchProfile(1, 16, 64)."""
    from medclf.runtime.tensorrt_engine import BatchProfile

    try:
        return BatchProfile(*(int(part) for part in text.split(",")))
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"{text!r}: give MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX ({exc})",
                                 param_hint="--batch-profile") from None


@app.command()
def benchmark(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras from medclf train, or an exported .onnx file.")],
    data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="Labelled images (folder per class); default: the run's validation split (required for an .onnx file).")] = None,
    precision: Annotated[str, typer.Option(help="Comma-separated ONNX precisions to compare with Keras (for an export's model.onnx: the files of these beside it).")] = "fp32,fp16,int8",
    images: Annotated[int, typer.Option(min=1, help="At most this many images, evenly spread.")] = 256,
    json_out: Annotated[Path, typer.Option("--json-out", dir_okay=False, help="Where the JSON goes.")] = Path("benchmark.json"),
    calibration: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="INT8: training images to calibrate on; default: the run's training split.")] = None,
    backend: Annotated[str, typer.Option(help="An .onnx file's timing backend: cpu, cuda, ort-tensorrt, tensorrt or auto.")] = "cpu",
) -> None:
    """Every format of MODEL side by side — Keras and each ONNX precision — with size, accuracy, ms per image and
    images/s on this machine; or one exported .onnx file alone, without TensorFlow, on the backend chosen."""
    from medclf.export.report import benchmark_table
    from medclf.runtime import BACKENDS

    if backend not in BACKENDS:
        raise typer.BadParameter(f"{backend!r}: choose one of {', '.join(BACKENDS)}", param_hint="--backend")
    if model.suffix == ".onnx":
        from medclf.export.onnx_benchmark import benchmark_onnx

        result = _library_call(lambda: benchmark_onnx(model, data, images, json_out, backend,
                                                      _parse_precisions(precision)))
    elif backend != "cpu":
        raise typer.BadParameter("Keras models are compared on the CPU; give an exported .onnx file for a GPU "
                                 "backend", param_hint="--backend")
    else:
        import_tensorflow()
        from medclf.export.benchmark import benchmark_model

        result = _library_call(lambda: benchmark_model(model, data, _parse_precisions(precision), images, json_out,
                                                       calibration))
    console.print(benchmark_table(result))
    console.print(f"written: {json_out}")


@app.command()
def demo(
    data: Annotated[Optional[Path], typer.Option(help="blood-cells folder with TRAIN/ and TEST/; default ../shared/data/blood-cells.")] = None,
    out: Annotated[Path, typer.Option("--out", callback=_writable_folder, help="Where the run and the export go.")] = Path("runs/demo"),
    per_class: Annotated[int, typer.Option(min=10, help="Training images per class.")] = 400,
) -> None:
    """The main job end to end on real data: train → export + verify → classify unseen images."""
    import_tensorflow()
    from .demo import default_data, run_demo

    data = data or default_data()
    if not (data / "TRAIN").is_dir():
        error(f"{data}/TRAIN not found; pass --data with the blood-cells folder")
        raise typer.Exit(2)
    _library_call(lambda: run_demo(data, out, per_class, console))


def _writable_folder(path: Path | None) -> Path | None:
    """``--out`` checked before the work, not after it (a read-only mount, a file in the way)."""
    return _writable(path, folder=True)


def _writable_file(path: Path | None) -> Path | None:
    return _writable(path, folder=False)


def _writable(path: Path | None, folder: bool) -> Path | None:
    from medclf.runtime.atomic import unwritable

    if path is not None and (problem := unwritable(path, folder)):
        raise typer.BadParameter(f"{path}: {problem}")
    return path


def _parse_size(text: str) -> int | tuple[int, int]:
    """'160' → 160; '240x320' → (240, 320) (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 16:
        raise typer.BadParameter(f"{text!r}: give N or HxW, each at least 16", param_hint="--image-size")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def _naming(data: Path, text: str | None, labels: str | None, leaf_folders: bool):
    """Where labels come from (:func:`_parse_naming`); with no option given, the sheet a dataset ships beside
    images no folder labels (``labels_csv.sheet_beside``: MedMNIST's export, HAM10000, APTOS), else class folders."""
    from .labels_csv import sheet_beside

    return _parse_naming(text, labels, leaf_folders) or sheet_beside(data)


def _parse_naming(text: str | None, labels: str | None = None, leaf_folders: bool = False):
    """'.' → NameLabels('.', 0); '_:1' → NameLabels('_', 1); ``labels`` (a CSV) → CsvLabels; ``leaf_folders`` →
    FolderLabels; none → None (labels from the class folders)."""
    from .labellers import FolderLabels, NameLabels
    from .labels_csv import read_labels_csv

    if (text is not None) + (labels is not None) + leaf_folders > 1:
        raise typer.BadParameter("labels come from file names, a CSV or the folders holding the images: one of them",
                                 param_hint="--name-labels, --labels, --leaf-folders")
    if labels is not None:
        return read_labels_csv(labels)
    if leaf_folders:
        return FolderLabels()
    if text is None:
        return None
    if not text:
        raise typer.BadParameter("give a separator, optionally :POSITION", param_hint="--name-labels")
    head, _, tail = text.rpartition(":")
    if head and tail.lstrip("-").isdigit():
        return NameLabels(head, int(tail))
    return NameLabels(text, 0)


def _library_call(call):
    """Run a library call; known failures become one red line and exit status 1, not a traceback."""
    from medclf.runtime import BackendUnavailable, ImageError, ModelCardError
    from medclf.runtime.tensorrt_engine import TensorRTUnavailable

    known: tuple[type[Exception], ...] = (FileNotFoundError, ValueError, ImageError, ModelCardError,
                                          TensorRTUnavailable, BackendUnavailable)
    try:
        from medclf.export.verify import VerificationError
        known += (VerificationError,)
    except ImportError:  # the export extra is not installed
        pass
    try:
        return call()
    except known as exc:
        error(str(exc))
        raise typer.Exit(1) from None


def _print_metrics(metrics: dict) -> None:
    """One line per split; for three classes or more, the last split's per-class table beneath."""
    splits = [split for split in ("validation", "test", "evaluation") if split in metrics]
    for split in splits:
        m = metrics[split]
        extra = "".join(f", {k} {m[k]:.3f}" for k in ("sensitivity", "specificity") if m.get(k) is not None)
        extra += _operating_point(m)
        auc = f", ROC AUC {m['roc_auc_macro']:.3f}" if m.get("roc_auc_macro") is not None else ""
        console.print(f"{split}: accuracy {m['accuracy']:.3f}{auc}{extra}, "
                      f"calibration error {m['expected_calibration_error']:.3f} on {m['images']} images")
        if "per_source" in m:
            source = m["per_source"]
            right = ", ".join(f"{name} {c['right']}/{c['sources']}" for name, c in source["per_class"].items())
            kind = source.get("kind", "sources")  # patients, or source images (copies of one cell)
            console.print(f"{split}, one vote per {kind[:-1]}: accuracy {source['accuracy']:.3f} over "
                          f"{source['sources']} {kind} ({right})")
        if "at_prevalence" in m:
            console.print(f"{split}, {_prevalence_line(m['at_prevalence'], m.get('positive_class'))}")
    if splits and len(metrics[splits[-1]]["per_class"]) > 2:
        table = _per_class_table(metrics[splits[-1]]["per_class"], splits[-1])
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        # a log or a pipe has no width to keep to: long class names stay on one line there
        out = console if console.is_terminal else Console(file=console.file, width=max(console.width, natural))
        out.print(table)


def _prevalence_line(site: dict, positive: str | None) -> str:
    """'at the stated prevalence (NORMAL 90.0%, PNEUMONIA 10.0%): accuracy ..., a PNEUMONIA call right 0.412
    of the time (PPV), a NORMAL call 0.993 (NPV), ...'; per class for more than two."""
    precision = site["precision"]
    if positive is not None:
        negative = next(name for name in precision if name != positive)
        right = (f"a {positive} call right {precision[positive]:.3f} of the time (PPV), a {negative} call "
                 f"{precision[negative]:.3f} (NPV)")
    else:
        right = "calls right: " + ", ".join(f"{name} {value:.3f}" for name, value in precision.items())
    return (f"at the stated prevalence ({_percentages(site['shares'])}): accuracy {site['accuracy']:.3f}, {right}, "
            f"calibration error {site['expected_calibration_error']:.3f}, log loss {site['log_loss']:.3f}")


def _per_class_table(per_class: dict, split: str) -> Table:
    """Each class against the others: what a clinician reads of a multi-class result."""
    table = Table(Column("class", overflow="fold"), "images", "sensitivity", "specificity", "precision", "F1",
                  "ROC AUC", title=f"{split}, per class", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  show_edge=False)
    for name, c in per_class.items():
        numbers = [c["recall"], c.get("specificity"), c["precision"], c["f1-score"], c.get("roc_auc")]
        table.add_row(escape(name), f"{c['support']:.0f}", *("—" if x is None else f"{x:.3f}" for x in numbers))
    return table


def _operating_point(m: dict) -> str:
    """" (threshold T)" for a binary split, with the accuracy of the model's own call when T is not 0.5."""
    if m.get("threshold") is None:
        return ""
    if m["threshold"] == 0.5 or m.get("accuracy_at_argmax") is None:
        return f" (threshold {m['threshold']:.3g})"
    return f" (threshold {m['threshold']:.3g}; accuracy {m['accuracy_at_argmax']:.3f} at 0.5)"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
