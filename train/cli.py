"""``medclf``: the toolchain CLI — train, crossval, evaluate, explain, augment, export, benchmark, demo.
Thin commands: validate (the option types and their parsers are :mod:`.options`), call the library, print
(what is printed is formatted in :mod:`.printed`).

TensorFlow is imported inside the commands that need it, so ``medclf --help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from medclf.runtime.atomic import stop_on_term, unwritable

from .options import (Arch, AugmentViews, Augmentation, BatchSize, Clahe, Crop, CropFraction, Distribute, Epochs,
                      ExistingDir, FreezeUntil, Grey, GroupCopies, GroupPattern, HeadEpochs, ImageSize, LabelsCsv,
                      LeafFolders, LearningRate, NameLabelsOption, Preset, Pretrained, Schedule, ScoredData, Seed,
                      TargetSensitivity, TimeBudgetOption, TopFoldersOption, TrainingData, Tta, ValSplit, Wise,
                      held_out_data, label_source, parse_float_counts, parse_precisions, parse_profile, parse_shares,
                      recipe_of, recipes_of, writable_file, writable_folder)
from .printed import (agreement_line, console, error, errors, familiarity_line, final_weights_line, intervals_line,
                      percentages, print_metrics, print_unreadable, site_metrics, unlike_line)
from .quiet_tensorflow import import_tensorflow

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Medical image classification: folder-per-class data → verified ONNX → medclf-run.")


def _say_version(asked: bool) -> None:
    if asked:
        from medclf import __version__

        console.print(f"medclf {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_say_version, is_eager=True,
                                                   help="Say which medclf this is, and exit.")] = False) -> None:
    """Medical image classification: folder-per-class data → verified ONNX → medclf-run."""


@app.command()
def train(
    data: TrainingData,
    out: Annotated[Path, typer.Option("--out", callback=writable_folder, help="Run directory to write.")] = Path("runs/latest"),
    preset: Preset = None, arch: Arch = None, image_size: ImageSize = None, epochs: Epochs = None,
    head_epochs: HeadEpochs = None, batch_size: BatchSize = None, learning_rate: LearningRate = None,
    val_split: ValSplit = None,
    test: Annotated[Optional[Path], typer.Option(exists=True, callback=held_out_data, help="Test folder, or a MedMNIST .npz file (its test arrays), scored once at the end.")] = None,
    grey: Grey = None, crop: Crop = None, crop_fraction: CropFraction = None, augment_views: AugmentViews = None,
    pretrained: Pretrained = None, clahe: Clahe = None, group_pattern: GroupPattern = None,
    group_copies: GroupCopies = None, freeze_until: FreezeUntil = None, augmentation: Augmentation = None,
    schedule: Schedule = None, target_sensitivity: TargetSensitivity = None, name_labels: NameLabelsOption = None,
    labels: LabelsCsv = None, leaf_folders: LeafFolders = False, top_folders: TopFoldersOption = False,
    limit_per_class: Annotated[Optional[int], typer.Option(min=1, help="Train on at most N images per class, and validate on at most N of each (a quick look, demos).")] = None,
    wise: Wise = None, time_budget: TimeBudgetOption = None, seed: Seed = None, distribute: Distribute = None,
) -> None:
    """Train a classifier on DATA and write RUN_DIR: model.keras, labels.json, preprocess.json, decision.json
    (binary), metrics.json, history.csv, curves.png, confusion_matrix.png, roc.png, calibration.png."""
    options = dict(locals())
    import_tensorflow()
    from medclf.rundir import RunDir

    from .ensemble import train_ensemble
    from .pipeline import train as run_training

    recipes = _library_call(lambda: recipes_of(preset, options))
    naming = _library_call(lambda: label_source(data, name_labels, labels, leaf_folders, top_folders))
    if len(recipes) > 1:  # an ensemble preset: its members trained in turn, then averaged into RUN_DIR
        result = _library_call(lambda: train_ensemble(data, out, recipes, test, naming, limit_per_class))
        for member in result.metrics["training"]["members"]:
            console.print(f"member {Path(member).name}:")
            print_metrics(RunDir(Path(member)).metrics)
        console.print("the members averaged:")
    else:
        result = _library_call(lambda: run_training(data, out, recipes[0], test=test, naming=naming,
                                                    limit_per_class=limit_per_class))
    print_metrics(result.metrics)
    if (wise := result.metrics["training"].get("wise")) is not None:
        console.print(final_weights_line(wise), highlight=False)
    if (temperature := result.metrics["training"].get("temperature")) is not None:
        console.print(f"probabilities calibrated on validation: the model divides its logits by {temperature:.3g}")
    print_unreadable(result.metrics["training"].get("unreadable", {}))
    console.print(f"wrote {result.run_dir} in {result.seconds:.0f} s")
    exported = result.run_dir / "exported"
    console.print(f"next: medclf export {result.run_dir / 'model.keras'} (into {exported}), then medclf-run --model "
                  f"{exported / 'model.onnx'} IMAGES", highlight=False)


@app.command()
def crossval(
    data: TrainingData,
    out: Annotated[Path, typer.Option("--out", callback=writable_folder, help="Folder for one run directory per fold and crossval.json.")] = Path("runs/crossval"),
    folds: Annotated[int, typer.Option(min=2, help="Number of folds.")] = 5,
    preset: Preset = None, arch: Arch = None, image_size: ImageSize = None, epochs: Epochs = None,
    head_epochs: HeadEpochs = None, batch_size: BatchSize = None, learning_rate: LearningRate = None,
    val_split: ValSplit = None, grey: Grey = None, crop: Crop = None, crop_fraction: CropFraction = None,
    augment_views: AugmentViews = None, pretrained: Pretrained = None, clahe: Clahe = None,
    group_pattern: GroupPattern = None, group_copies: GroupCopies = None, freeze_until: FreezeUntil = None,
    augmentation: Augmentation = None, schedule: Schedule = None, target_sensitivity: TargetSensitivity = None,
    name_labels: NameLabelsOption = None, labels: LabelsCsv = None, leaf_folders: LeafFolders = False,
    top_folders: TopFoldersOption = False, wise: Wise = None, time_budget: TimeBudgetOption = None, seed: Seed = None,
    distribute: Distribute = None,
) -> None:
    """K-fold cross-validation for small datasets: each fold's model scored on its held-out fold; mean ± spread."""
    options = dict(locals())
    import_tensorflow()
    from .crossval import REPORTED, cross_validate

    recipe = _library_call(lambda: recipe_of(preset, options))
    naming = _library_call(lambda: label_source(data, name_labels, labels, leaf_folders, top_folders))
    summary = _library_call(lambda: cross_validate(data, out, recipe, folds, naming))
    for name in REPORTED:
        if summary[name] is not None:
            console.print(f"{name}: {summary[name]['mean']:.3f} ± {summary[name]['std']:.3f} "
                          f"over {summary[name]['folds']} folds")
    pooled = summary["pooled"]
    auc = f", ROC AUC {pooled['roc_auc_macro']:.3f}" if pooled["roc_auc_macro"] is not None else ""
    console.print(f"the {pooled['images']} held-out images pooled: accuracy {pooled['accuracy']:.3f}{auc}; "
                  f"{intervals_line(pooled['confidence_intervals'], None)}")
    console.print(f"wrote {out}/crossval.json")


def _evaluation_folder(default: Path, data: Path, model: Path) -> Path:
    """``default``, or where it holds the record of other data (``siteA/test`` after ``siteB/test``: both are
    "test") or of another model file at the same path (a deployment's model.onnx replaced), the first of
    ``default-2``, ``-3``... that is free or holds this data's and this file's: a site's acceptance record is
    not replaced by another's without a word."""
    from medclf import rundir
    from medclf.runtime.describe import file_sha256

    scored = (str(data.resolve()), file_sha256(model))
    for folder in rundir.numbered(default, folder=True):
        try:
            record = json.loads((folder / rundir.METRICS).read_text())["evaluated"]
            if (record["data"], record["model_sha256"]) == scored:
                return folder
        except (OSError, ValueError, KeyError, TypeError):  # no record there (yet): ours to write
            return folder
    return default


def _home_of(model: Path) -> Path:
    """Where a command writes what it makes of MODEL: beside it, except for the models packaged with medclf
    (inside the installed package, perhaps read-only, and not the user's to add to): the current folder."""
    from medclf.runtime import DEFAULT_MODEL

    packaged = DEFAULT_MODEL.parent.parent.resolve()
    return Path(".") if model.resolve().is_relative_to(packaged) else model.parent


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras, or an exported .onnx file.")],
    data: ScoredData,
    out: Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for metrics.json, confusion_matrix.png, roc.png, calibration.png; default RUN_DIR/evaluation-<DATA name> (./evaluation-<DATA name> for the packaged model), -int8, -fp16, -site, -tta-flip, -sensitivity-0.95... added for those files and options, so each precision's record stands beside the others.")] = None,
    target_sensitivity: TargetSensitivity = None,
    name_labels: NameLabelsOption = None,
    labels: LabelsCsv = None,
    leaf_folders: LeafFolders = False, top_folders: TopFoldersOption = False,
    group_pattern: GroupPattern = None,
    group_copies: GroupCopies = None,
    prevalence: Annotated[Optional[list[str]], typer.Option(metavar="CLASS=SHARE", help="Also score the calls as they would do where cases come in these proportions, e.g. PNEUMONIA=10% (DATA collected so many of each class): accuracy, how often each call is right (a binary model's PPV and NPV), calibration error, log loss.")] = None,
    tta: Tta = None,
) -> None:
    """Score MODEL (Keras, or exported ONNX through the runtime) on a folder-per-class DATA set: accuracy, ROC
    AUC, per-class scores, calibration, and for binary tasks sensitivity/specificity at the model's threshold.
    Where a patient's files (--group-pattern, sub-folders, names numbered within a patient) or augmented copies of
    one image (looked for) belong together, also accuracy counted once per patient or source image; a run's model
    groups them as its run did unless --group-pattern or --group-copies is given."""
    import_tensorflow()
    from medclf import rundir

    from .medmnist import dataset_name
    from .pipeline import evaluate_run

    shares = parse_shares(prevalence)
    stem = model.name.rsplit(".", 1)[0]
    which = "" if stem == "model" else stem.removeprefix("model.")  # model.int8.onnx: int8; mine.onnx: mine
    scored = (dataset_name(data) + (f"-{which}" if which else "") + (f"-tta-{tta}" if tta else "")  # side by side
              + (f"-sensitivity-{target_sensitivity:g}" if target_sensitivity is not None else ""))
    if out is None:  # the default checked before the work too, as --out is (a model in a read-only folder)
        out = _evaluation_folder(_home_of(model) / rundir.EVALUATION.format(data=scored), data, model)
        if problem := unwritable(out, folder=True):
            error(f"{out}: {problem}; name a folder to write the evaluation to with --out")
            raise typer.Exit(2)
    metrics = _library_call(lambda: evaluate_run(model, data, out, target_sensitivity,
                                                 naming=label_source(data, name_labels, labels, leaf_folders,
                                                                     top_folders),
                                                 group_pattern=group_pattern,
                                                 group_copies=group_copies, prevalence=shares, tta=tta))
    if tta:
        from medclf.runtime.tta import VIEWS

        console.print(f"probabilities averaged over test-time views: {VIEWS[tta]}")
    print_metrics({"evaluation": metrics})
    if target_sensitivity is not None and metrics.get("threshold") is not None:
        console.print(f"scored at a threshold chosen now for sensitivity {target_sensitivity:g} "
                      f"({metrics['threshold']:.3g}), not the one {model.name} calls at", highlight=False)
    if (fp32 := metrics.get("agreement_with_fp32")) is not None:
        console.print(agreement_line(fp32, model.name, metrics["accuracy"]), highlight=False)
    if (unlike := metrics.get("unlike_training")) is not None:
        console.print(unlike_line(unlike, model.name), highlight=False)
    console.print(f"wrote {out}/metrics.json, confusion_matrix.png, roc.png, calibration.png")


@app.command()
def ensemble(
    runs: Annotated[list[Path], typer.Argument(exists=True, file_okay=False, help="Two or more RUN_DIRs from medclf train that held out the same validation images (same --seed and --group-pattern).")],
    out: Annotated[Path, typer.Option("--out", callback=writable_folder, help="The ensemble's RUN_DIR (medclf export takes its model.keras).")],
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
    print_metrics(metrics)
    console.print(f"wrote {out}/model.keras and its run files")


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="An exported .onnx model.")],
    data: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The site's own labelled images, one folder per class (at least 30 of each; a patient or copies of one image count once).")],
    out: Annotated[Optional[Path], typer.Option("--out", callback=writable_file, help="The calibrated copy; default MODEL's name with .site before .onnx.")] = None,
    target_sensitivity: Annotated[Optional[float], typer.Option(min=0.01, max=1.0, help="Binary models: pick the threshold reaching this sensitivity on DATA (default: the model's own rule — the sensitivity its threshold was chosen for, else Youden's J).")] = None,
    youden: Annotated[bool, typer.Option("--youden", help="Binary models: pick the threshold by Youden's J, whatever rule the model's own threshold was chosen by.")] = False,
    name_labels: NameLabelsOption = None,
    labels: LabelsCsv = None,
    leaf_folders: LeafFolders = False, top_folders: TopFoldersOption = False,
    group_pattern: GroupPattern = None,
    group_copies: GroupCopies = None,
    class_bias: Annotated[bool, typer.Option("--class-bias/--no-class-bias", help="Fit a bias per class: the site's prevalence, taken from the proportions DATA holds. Off (temperature alone) when DATA was collected to hold so many of each class rather than as cases come and the site's prevalence is not known (else --prevalence).")] = True,
    prevalence: Annotated[Optional[list[str]], typer.Option(metavar="CLASS=SHARE", help="The site's prevalence when DATA was collected in other proportions, e.g. PNEUMONIA=0.1 or PNEUMONIA=10% (repeat or comma-separate for more classes; the rest share what is left as DATA holds them): the bias and every reported accuracy, calibration error and log loss are taken to it.")] = None,
    familiarity_from_site: Annotated[bool, typer.Option("--familiarity-from-site", help="DATA's images are the kind the model is for here: set the copy's unfamiliarity again on them, depth by depth, so that they lie beyond 1 as rarely as the training site's held-out images did (1 in 200), e.g. for another scanner or stain. Needs 64 images and a model exported with the unfamiliarity output.")] = False,
) -> None:
    """Fit a model's temperature and a bias per class (the site's own prevalence), and a binary model's decision
    threshold, on a site's own labelled images and write them into a copy of the ONNX file, so medclf-run answers
    by them. Prints the site's metrics as the model stands and an honest estimate of the new ones (fitted on half
    the images, scored on the other half), and draws the site's reliability curves before and after beside the
    copy (.png)."""
    from medclf.runtime.atomic import write_json

    import_tensorflow()
    from .calibrate import (calibrate_site, calibration_file, is_calibrated_copy, refuse_the_original,
                            write_calibrated)

    shares = parse_shares(prevalence)
    if youden and target_sensitivity is not None:
        raise typer.BadParameter("--youden and --target-sensitivity each choose the threshold: give one",
                                 param_hint="--youden")
    if out is not None and out.suffix.lower() != ".onnx":  # its record and picture take .json and .png beside it
        raise typer.BadParameter(f"{out}: give the calibrated copy a .onnx name", param_hint="--out")
    if out is not None:  # before any work: the picture went beside it first
        try:
            refuse_the_original(model, out)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from None
    out = out or calibration_file(_home_of(model) / f"{model.stem}.site{model.suffix}", data)
    picture = out.with_suffix(".png")
    replacing = is_calibrated_copy(out)  # a picture beside anything else is the user's, never removed
    site = _library_call(lambda: calibrate_site(model, data, target_sensitivity,
                                                label_source(data, name_labels, labels, leaf_folders, top_folders),
                                                group_pattern, group_copies, picture=picture,
                                                class_bias=class_bias, prevalence=shares,
                                                familiarity_from_site=familiarity_from_site, own_rule=not youden))
    record = site.record(data.resolve().name) | {"data_path": str(data.resolve())}
    _library_call(lambda: write_calibrated(model, out, site, record))
    write_json(out.with_suffix(".json"), record)
    if site.prevalence is not None:
        stated, held = (percentages(site.prevalence[key]) for key in ("stated", "images"))
        console.print(f"at the stated prevalence ({stated}; the site images hold {held}), each image weighted "
                      "by the ratio:")
    console.print(f"as the model stands, {site.images} site images: {site_metrics(site.before)}")
    if site.familiarity is not None:
        console.print(familiarity_line(site.familiarity))
    scaling = [f"temperature {site.temperature:.3g}, bias "
               + " ".join(f"{name} {value:+.2f}" for name, value in site.bias.items())] if site.bias else []
    new = ", ".join((scaling or ["no temperature or bias (the site's images cannot tell them)"])
                    + ([f"threshold {site.decision.threshold:.3g} ({site.decision.rule.split(',')[0]})"]
                       if site.decision is not None else []))
    if site.estimate is None and replacing and picture.exists():  # the replaced calibration's, not redrawn
        picture.unlink()
        errors.print(f"removed {picture}: the picture of the calibration this one replaced",
                     highlight=False)
    if site.estimate is None:
        console.print(f"new: {new}; too few images to estimate their worth (60 independent ones of each class let "
                      "them be fitted on one half and scored on the other)")
    else:
        console.print(f"new: {new}: {site_metrics(site.estimate)} (fitted on half the site images, scored on the "
                      f"other half, {site.estimate['splits']} splits)")
    if site.estimate is not None and site.temperature is not None and not _better(site.estimate):
        errors.print("warning: on the site's own halves the calibrated copy's probabilities are no better than the "
                     "model's as it stands (calibration error and log loss): keep the model"
                     + (", or fit the temperature alone (--no-class-bias)" if class_bias else ""), highlight=False)
    written = [out, out.with_suffix(".json")] + ([picture] if site.estimate is not None else [])
    console.print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}"
                  + (" (reliability before and after)" if site.estimate is not None else ""))


def _better(estimate: dict) -> bool:
    """Whether a site calibration's estimate beats the model as it stands on calibration error or log loss."""
    keys = [key for key in ("expected_calibration_error", "log_loss") if f"{key}_before" in estimate]
    return not keys or any(estimate[key]["mean"] < estimate[f"{key}_before"]["mean"] for key in keys)


@app.command()
def explain(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras from medclf train.")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    out: Annotated[Path, typer.Option("--out", callback=writable_folder, help="Folder for the heatmap overlays.")] = Path("gradcam"),
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
            console.print(f"{item.path}: {item.label} {item.probability:.3f} → {item.heatmap}", highlight=False,
                          markup=False)  # a path is text, not markup ("eye [left].jpeg")
    if failed:
        raise typer.Exit(1)


@app.command()
def augment(
    data: ExistingDir,
    out: Annotated[Path, typer.Option("--out", callback=writable_folder, help="Folder for the copies, mirroring DATA's sub-folders.")],
    copies: Annotated[int, typer.Option(min=1, help="Augmented copies per image.")] = 5,
    augmentation: Annotated[str, typer.Option(help="Policy: default, microscopy or radiograph (as in medclf train).")] = "default",
    seed: Annotated[int, typer.Option()] = 0,
    labels: LabelsCsv = None,
) -> None:
    """Write augmented copies of every image to disk, of the training images alone where DATA is split — by
    folders, or by the split column of a sheet beside it or given as --labels (training augments on the fly
    and does not need this)."""
    import_tensorflow()
    from .augment import augment_folder

    done = failed = 0
    for item in _library_call(lambda: augment_folder(data, out, copies, seed, augmentation, labels)):
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
    out: Annotated[Optional[Path], typer.Option("--out", callback=writable_folder, help="Folder for the ONNX files and export_report.json; default: RUN_DIR/exported, beside the model (a rerun of training sets it aside with the run).")] = None,
    precision: Annotated[str, typer.Option(help="Comma-separated: fp32, fp16, int8. FP32 is always made; the others derive from it. FP16 is verified as a GPU computes it (float16 activations), the others as this CPU does.")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="FP16 and INT8: real training images to calibrate on (FP16 rounds its weights to keep their outputs on them); default: the run's training split.")] = None,
    verify_data: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="Images to verify on; default: the run's validation split.")] = None,
    verify_images: Annotated[int, typer.Option(min=1, help="At most this many verification images, evenly spread (99.9% agreement, FP16's tolerance, needs 1,000 to mean anything).")] = 1024,
    engine: Annotated[bool, typer.Option("--engine", help="Also build and verify a TensorRT engine per precision (needs an NVIDIA GPU and the medclf\\[gpu] extra).")] = False,
    batch_profile: Annotated[str, typer.Option(help="Engine and Triton batch sizes: MIN,OPT,MAX.")] = "1,16,64",
    triton: Annotated[Optional[Path], typer.Option(file_okay=False, callback=writable_folder, help="Also write a Triton Inference Server model repository here.")] = None,
    cam: Annotated[bool, typer.Option("--cam", help="Add a second output, class activation maps, so the runtime can draw heatmaps without TensorFlow.")] = False,
    float_convs: Annotated[Optional[list[str]], typer.Option(metavar="PRECISION=N", help="Keep the first N convolutions float32 in that file: for INT8 instead of searching for the fewest that pass with a margin (e.g. int8=3 for a faster INT8), for FP16 instead of none (repeat or comma-separate for both); verification still decides.")] = None,
    familiarity: Annotated[bool, typer.Option(help="Add an output saying how unlike the training images each image is, so the runtime warns where a call is a guess (a chest film given to a blood-cell model).")] = True,
) -> None:
    """Export MODEL to ONNX per precision (uint8 in, probabilities out, labels and preprocessing inside), each
    verified against Keras before it is written under its final name."""
    import_tensorflow()
    from medclf.export.pipeline import export_run, failed_files
    from medclf.export.report import computed_lines, export_table, familiarity_lines, search_lines

    profile = parse_profile(batch_profile)
    counts = parse_float_counts(float_convs)
    out = out or writable_folder(model.parent / "exported")  # ./exported was every run's: each replaced the last
    report = _library_call(lambda: export_run(model, out, parse_precisions(precision), verify_data=verify_data,
                                              calibration_data=calibration, max_images=verify_images,
                                              engine=engine, profile=profile, triton=triton, cam=cam,
                                              strict=False, float_convs=counts, familiarity=familiarity))
    console.print(export_table(report))
    for line in search_lines(report) + computed_lines(report) + familiarity_lines(report):
        console.print(line, highlight=False)
    for path in report.get("triton", []):
        console.print(f"Triton model: {path}")
    for path in report["removed"]:
        console.print(f"removed {path}: left by an earlier export (of another model, or an engine of a file "
                      "replaced now), it would be served as this one's")
    for file, reasons in failed_files(report):
        error(f"{file} not written: {'; '.join(reasons)}")
    if not report["passed"]:
        raise typer.Exit(1)


@app.command()
def benchmark(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="RUN_DIR/model.keras from medclf train, or an exported .onnx file.")],
    data: Annotated[Optional[Path], typer.Option("--data", "--verify-data", exists=True, file_okay=False, help="Labelled images (folder per class); default: the run's validation split (required for an .onnx file). --verify-data, as medclf export calls it, is the same option.")] = None,
    precision: Annotated[str, typer.Option(help="Comma-separated ONNX precisions to compare with Keras (for an export's model.onnx: the files of these beside it).")] = "fp32,fp16,int8",
    images: Annotated[int, typer.Option(min=1, help="At most this many images, evenly spread.")] = 256,
    json_out: Annotated[Path, typer.Option("--json-out", callback=writable_file, help="Where the JSON goes.")] = Path("benchmark.json"),
    calibration: Annotated[Optional[Path], typer.Option(exists=True, file_okay=False, help="INT8: training images to calibrate on; default: the run's training split.")] = None,
    backend: Annotated[str, typer.Option(help="An .onnx file's timing backend: cpu, cuda, ort-tensorrt, tensorrt or auto.")] = "cpu",
) -> None:
    """Every format of MODEL side by side — Keras and each ONNX precision — with size, accuracy, ms per image and
    images/s on this machine; or one exported .onnx file alone, without TensorFlow, on the backend chosen."""
    from medclf.export.report import benchmark_table
    from medclf.runtime import BACKENDS

    if backend not in BACKENDS:
        raise typer.BadParameter(f"{backend!r}: choose one of {', '.join(BACKENDS)}", param_hint="--backend")
    if model.suffix.lower() == ".onnx":
        from medclf.export.onnx_benchmark import benchmark_onnx

        if calibration is not None:  # the files beside it were calibrated when they were exported
            raise typer.BadParameter("an exported .onnx file's INT8 file is already calibrated; --calibration is for "
                                     "a Keras model", param_hint="--calibration")

        result = _library_call(lambda: benchmark_onnx(model, data, images, json_out, backend,
                                                      parse_precisions(precision)))
    elif backend != "cpu":
        raise typer.BadParameter("Keras models are compared on the CPU; give an exported .onnx file for a GPU "
                                 "backend", param_hint="--backend")
    else:
        import_tensorflow()
        from medclf.export.benchmark import benchmark_model

        result = _library_call(lambda: benchmark_model(model, data, parse_precisions(precision), images, json_out,
                                                       calibration))
    console.print(benchmark_table(result))
    console.print(f"written: {json_out}")


@app.command()
def demo(
    data: Annotated[Optional[Path], typer.Option(help="blood-cells folder with TRAIN/ and TEST/; default ../shared/data/blood-cells.")] = None,
    out: Annotated[Path, typer.Option("--out", callback=writable_folder, help="Where the run and the export go.")] = Path("runs/demo"),
    per_class: Annotated[int, typer.Option(min=10, help="Training images per class.")] = 400,
) -> None:
    """The main job end to end on real data: train → export + verify → classify unseen images."""
    import_tensorflow()
    from .demo import default_data, run_demo

    data = data or default_data()
    if missing := [split for split in ("TRAIN", "TEST") if not (data / split).is_dir()]:  # said before training
        error(f"{data}/{missing[0]} not found; pass --data with the blood-cells folder (TRAIN/ and TEST/)")
        raise typer.Exit(2)
    _library_call(lambda: run_demo(data, out, per_class, console))


def _library_call(call):
    """Run a library call; known failures become one red line and exit status 1, not a traceback."""
    from medclf.runtime import BackendUnavailable, ImageError, ModelCardError
    from medclf.runtime.tensorrt_engine import TensorRTUnavailable

    known: tuple[type[Exception], ...] = (OSError, ValueError, ImageError, ModelCardError,  # OSError: a full disk
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


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_term)  # as Ctrl-C: temporary files removed on the way out
    _plain_warnings()
    app()


def _plain_warnings() -> None:
    """medclf's warnings as plain lines on stderr for the whole run, whatever a library does to the root logger:
    a dependency's module-level ``logging.warning()`` configures it, and from then on medclf's lines came out as
    ``WARNING:medclf.train.copies:...`` (the demo's last step did)."""
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("medclf")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


if __name__ == "__main__":
    main()
