"""``medclf export`` as a function: a run directory's Keras model → verified ONNX files, one per precision.

FP32 is always made (FP16 and INT8 derive from it). Every file is first written in a private work folder,
verified against Keras on real held-out images within its precision's tolerance, timed on the CPU, and only
then moved to its final name. ``export_report.json`` is written either way and says what was compared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medclf.rundir import RunDir
from medclf.runtime.atomic import atomic_write, lock_at_once, replace_durably, write_json
from medclf.runtime.class_names import class_on_path
from medclf.runtime.classifier import Classifier
from medclf.runtime.cpu import this_cpu
from medclf.runtime.modelcard import (CAM_NAME, FAMILIARITY_MIN_IMAGES, FAMILIARITY_NAME, FAMILIARITY_QUANTILE,
                                      ModelCard, unlike)
from medclf.runtime.tensorrt_engine import BatchProfile, EngineCache, TensorRTEngine, gpu_identity, tensorrt

from .candidates import FLOAT16_ACTIVATIONS, Converters, derive, judged_probabilities, save
from .depth_weights import set_again_on
from .familiarity import DESCRIPTION as FAMILIARITY_DESCRIPTION
from .familiarity import FIT_IMAGES, Familiarity, FamiliarityUnavailable, fit
from .files import FILE_NAMES, TENSORRT_FLAVOUR, card_of_file
from .float_search import asked_steps, choose_float_layers
from .fp16 import Fp16Converter
from .held_out import HeldOut, held_out_sets
from .int8 import ImageCalibrationReader, Int8Quantizer
from .keras_model import check_label_order, check_probabilities, loaded
from .verification_images import CALIBRATION_IMAGES, MAX_VERIFY_IMAGES, chosen_images, recorded, verification_images
from .labelled_images import load_labelled
from .onnx_export import CAM_DESCRIPTION, OPSET, cam_head, convert, provenance
from .simplify import simplify
from .speed import speed
from .triton import one_line_each, write_model
from .verify import VerificationError

PRECISIONS = ("fp32", "fp16", "int8")


def export_run(model_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               precisions: tuple[str, ...] = ("fp32",), verify_data: str | os.PathLike[str] | None = None,
               calibration_data: str | os.PathLike[str] | None = None,
               max_images: int = MAX_VERIFY_IMAGES, engine: bool = False, profile: BatchProfile = BatchProfile(),
               triton: str | os.PathLike[str] | None = None, cam: bool = False, strict: bool = True,
               float_convs: dict[str, int] | None = None, familiarity: bool = True) -> dict:
    """Export, verify and publish one file per precision in ``OUT_DIR``. A file that disagrees with Keras is not
    published (the others are); ``strict`` raises :class:`VerificationError` naming every such file, otherwise
    the report's ``passed`` says so. ``engine`` also builds, verifies and publishes a TensorRT engine per
    precision (GPU machines only) for the batch sizes of ``profile``, whose largest is also Triton's
    ``max_batch_size``; ``triton`` writes a Triton model repository of what was published; ``cam``
    adds a class-activation-map output the runtime draws heatmaps from. ``float_convs`` (``{"int8": 3}``) keeps
    that many leading convolutions float instead of searching for the number
    (:func:`~.float_search.choose_float_layers`);
    verification judges the file as always. ``familiarity`` adds the output that says how unlike the training
    images an image is (:mod:`.familiarity`), where the model allows it (the report says why not)."""
    model_path, out = Path(model_path), Path(out_dir)
    precisions = _with_fp32(precisions)
    float_convs = asked_steps(float_convs or {}, precisions)
    if engine and triton is not None and profile.min > 1:  # said before the minutes of work, not after
        raise ValueError(f"--batch-profile {profile.min},{profile.opt},{profile.max}: Triton sends a request alone "
                         "when no other is waiting, which an engine whose smallest batch is over 1 cannot take; "
                         "give MIN 1 to serve the engine on Triton")
    if engine:  # no TensorRT or no GPU: say so now, before minutes of work
        tensorrt()
        gpu_identity()
    if triton is not None and (other := _served_from_another_run(Path(triton), model_path)):
        raise ValueError(other)
    card = model_card(model_path, cam)
    if triton is not None:
        one_line_each(card.labels)  # said before the work, not after it
    model = loaded(model_path, len(card.labels), card.preprocess.shape)
    if cam:
        cam_head(model)  # a model --cam cannot serve is refused before the work (and before --out is made)
    if calibration_data is not None and verify_data is not None and \
            Path(calibration_data).resolve() == Path(verify_data).resolve() and {"fp16", "int8"} & set(precisions):
        print(f"warning: --calibration and --verify-data are both {verify_data}: FP16 and INT8 are then judged on "
              "the images they were fitted to, a kinder verdict than on others", file=sys.stderr)
    paths, names, described = verification_images(model_path.parent, verify_data, calibration_data, max_images,
                                                   calibrating="int8" in precisions)
    held_out, search = held_out_sets(model, card, paths, names, max_images,
                                     searching=bool({"fp16", "int8"} & set(precisions)), levels=familiarity)
    check_probabilities(model_path, held_out.reference)
    if not RunDir(model_path.parent).trained_by_medclf:  # written by hand: its labels.json's order is checked
        check_label_order(model_path, card.labels, held_out.labels, held_out.calls(held_out.reference))
    fitted, familiarity_record = None, {"added": False, "why": "not asked for (--no-familiarity)"}
    familiar = held_out.images  # where the unfamiliarity threshold is set: held-out images alone
    if familiarity:
        fitted, familiarity_record, familiar = _familiarity(model, card, model_path.parent, calibration_data,
                                                            held_out, paths, names)
    if fitted is not None:
        card = dataclasses.replace(card, outputs=card.outputs | {FAMILIARITY_NAME: FAMILIARITY_DESCRIPTION},
                                   metrics=card.metrics | {"familiarity": fitted.record})
    converters = _converters(model_path.parent, calibration_data, card, precisions)
    report = {"model": str(model_path), "opset": OPSET, "images": len(held_out.images),
              "verified_on": f"{len(held_out.images)} real images ({described})", "calls": held_out.calls.describe(),
              "cpu": this_cpu(), "familiarity": familiarity_record, "precisions": {}}
    out.mkdir(parents=True, exist_ok=True)
    with _work_folder(out) as work:
        fp32 = work / FILE_NAMES["fp32"]
        proto, report["simplified"] = simplify(convert(model, card, cam=cam, familiarity=fitted), held_out.images)
        save(proto, card, fp32)
        candidates = {}
        for precision in precisions:
            if precision == "fp32":
                candidates[precision], tried = fp32, {}
            else:
                candidates[precision], tried = choose_float_layers(precision, fp32, card, converters, search,
                                                                   float_convs.get(precision))
                if fitted is not None:
                    tried["familiarity_weights"] = _familiarity_as_computed(candidates[precision], familiar, card)
            entry = _verify(candidates[precision], held_out, precision)
            if precision == "int8" and not _quantized(candidates[precision]):  # every convolution kept float
                entry |= {"passed": False, "failures": [*entry.get("failures", []), NOTHING_QUANTIZED]}
            report["precisions"][precision] = {"file": str(out / FILE_NAMES[precision]), **entry, **tried}
            if precision == "fp32" and not entry["passed"]:
                break  # the other precisions derive from a file that is already wrong
        int8 = report["precisions"].get("int8", {"passed": False})
        if engine and int8["passed"]:  # its TensorRT flavour, from the FP32 file before that moves
            candidates["int8 for tensorrt"] = derive("int8", fp32, card, converters, True, int8["float_convs"])
            if fitted is not None:
                _familiarity_as_computed(candidates["int8 for tensorrt"], familiar, card)
        report["removed"] = _publish(report["precisions"], candidates, profile if engine else None, held_out)
    report["removed"] += _remove_stale(out, report["precisions"], card)
    report["passed"] = all(_passed(entry) for entry in report["precisions"].values()) and \
        set(report["precisions"]) == set(precisions)
    write_json(out / "export_report.json", report)  # before Triton's: what was published is said either way
    if triton is not None:
        report["triton"] = _triton(Path(triton), triton_name(model_path), report, card, profile.max)
        write_json(out / "export_report.json", report)
    if strict and not report["passed"]:
        raise VerificationError("; ".join(f"{file} not written: {', '.join(failures)}"
                                          for file, failures in failed_files(report)))
    return report


@contextlib.contextmanager
def _work_folder(out: Path) -> Iterator[Path]:
    """A hidden folder in ``out`` for this export's files until they are published, held (``flock``) while it
    works. Those of exports killed outright (SIGKILL, the OOM killer), which no ``finally`` removed — 17 MB each,
    left for good — are removed first; one still held is another export's, running."""
    for left in out.glob(".export-*"):  # untouched for an hour: one just made is not locked yet, and a share's
        if left.is_dir() and time.time() - left.stat().st_mtime > 3600 and _claimed(left):  # locks may be local
            shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as work:
        held = os.open(work, os.O_RDONLY)
        try:
            _claimed(Path(work), held)
            yield Path(work)
        finally:
            os.close(held)


def _claimed(folder: Path, descriptor: int | None = None) -> bool:
    """Whether this process now holds ``folder``'s lock (``descriptor``: already open on it, kept open by the
    caller); False where another process holds it, or where it cannot be locked (Windows: a killed export's work
    folder stays)."""
    opened = descriptor is None
    try:
        descriptor = os.open(folder, os.O_RDONLY) if opened else descriptor
        return lock_at_once(descriptor) is True
    except OSError:
        return False
    finally:
        if opened and descriptor is not None:
            os.close(descriptor)


def _publish(entries: dict[str, dict], candidates: dict[str, Path], engine: BatchProfile | None,
             held_out: HeldOut) -> list[str]:
    """Move each verified candidate to its final name — only once every precision is measured — and, when asked,
    build and verify its TensorRT engine. The engine files an earlier export left beside a file replaced now were
    built from that earlier file, and go (returned): an engine is served only beside the file it came from."""
    removed = []
    for precision, entry in entries.items():
        if not entry["passed"]:
            continue
        final = Path(entry["file"])
        removed += _unlinked(_engine_files(final))
        replace_durably(candidates[precision], final)
        if engine is not None:
            source = Path(entry["file"]) if precision != "int8" else candidates["int8 for tensorrt"]
            entry["tensorrt"] = _engine(source, Path(entry["file"]).with_suffix(".plan"), precision, engine,
                                        held_out)
    return removed


def _remove_stale(out: Path, entries: dict[str, dict], card: ModelCard) -> list[str]:
    """Remove, from ``out``, the files an earlier export of *another* Keras model left under the names this export
    did not publish (a refused INT8, a precision not asked for this time), and their engines: beside the new
    ``model.onnx`` they would be served as this model's. An earlier export of this same model stays: it was
    verified against it. Returns the files removed."""
    published = {Path(entry["file"]).name for entry in entries.values() if entry["passed"]}
    removed = []
    for name in sorted(set(FILE_NAMES.values()) - published):
        path = out / name
        if path.is_file() and _another_models_card(path, card) is not None:
            removed += _unlinked([path, *_engine_files(path)])
    return removed


def _unlinked(paths: list[Path]) -> list[str]:
    """The files among ``paths`` that were there, removed."""
    removed = [str(path) for path in paths if path.is_file()]
    for path in removed:
        os.unlink(path)
    return removed


def _engine_files(onnx_file: Path) -> list[Path]:
    """What an export with ``--engine`` puts beside a published file: its engine, and for INT8 the flavour of the
    file the engine was built from."""
    precision = next(p for p, name in FILE_NAMES.items() if name == onnx_file.name)
    flavour = [onnx_file.with_name(TENSORRT_FLAVOUR[precision])] if precision in TENSORRT_FLAVOUR else []
    return [onnx_file.with_suffix(".plan"), *flavour]


def _another_models_card(path: Path, card: ModelCard) -> ModelCard | None:
    """The card of ``path`` where it is a medclf export of a Keras model other than ``card``'s (its card's
    ``keras_sha256`` differs), else None. A file that is not a medclf export, or cannot be read, is not known to
    be one: it is left alone."""
    found = card_of_file(path)
    theirs = found.source.get("keras_sha256") if found is not None else None
    return found if theirs is not None and theirs != card.source.get("keras_sha256") else None


NOTHING_QUANTIZED = ("nothing quantized: every convolution had to stay float to agree, so the file would be FP32 "
                     "under an INT8 name")


def _quantized(candidate: Path) -> bool:
    """Whether an INT8 candidate holds any quantized node: a 3-convolution model whose search kept all 3 float
    was published, served and put on Triton as INT8, the FP32 file's ops exactly."""
    import onnx

    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.op_type.startswith("QLinear")
               for node in onnx.load(str(candidate), load_external_data=False).graph.node)


def _verify(candidate: Path, held_out: HeldOut, precision: str) -> dict:
    """The comparison with Keras, the file's size, the share of held-out images it calls unlike the training
    images (where it says), and its CPU speed (measured even for a file that fails: what a precision would have
    bought is part of the decision). One pass as onnxruntime serves the file here gives its probabilities and
    unfamiliarity; FP16 is judged on a second, with float16 activations, as a GPU computes it."""
    served, unfamiliarity = Classifier(candidate).assess(held_out.images, batch_size=32)
    judged = served if precision != "fp16" else judged_probabilities(candidate, held_out.images, precision)
    entry = {"size_bytes": candidate.stat().st_size, **held_out.compare(judged, precision).to_dict()}
    if precision == "fp16":  # how this CPU serves it, for the record
        on_cpu = held_out.compare(served, precision)
        entry |= {"computed_as": FLOAT16_ACTIVATIONS,
                  "on_this_cpu": {"agreement": on_cpu.agreement, "max_abs_diff": on_cpu.max_abs_diff}}
    if unfamiliarity is not None:  # FP32 about 0.5% by construction; FP16 and INT8 move the features under it
        entry["unlike_training"] = float(np.mean(unlike(unfamiliarity)))
    return entry | speed(candidate, held_out.images)


def _familiarity(model, card: ModelCard, run_dir: Path, calibration_data: str | os.PathLike[str] | None,
                 held_out: HeldOut, paths: list[str], names: list[str]
                 ) -> tuple[Familiarity | None, dict, np.ndarray]:
    """The fitted :class:`~.familiarity.Familiarity` — class means and covariances on up to ``FIT_IMAGES`` of
    the run's training images (or ``calibration_data``), threshold on the verification images the model was not
    trained on where there are ``FAMILIARITY_MIN_IMAGES`` of them (``paths``: a run that holds out too few tops
    them up with training images, which the model knows better — the threshold then sits tighter, and 14% of
    fresh films of the same kind were flagged: said in the record) — its record for the report, and the images
    the threshold was set on; or None and why it could not be added (no dense head, too few images)."""
    trained = _trained_paths(run_dir)
    untrained = [i for i, path in enumerate(paths) if path not in trained]
    among = len(paths) - len(untrained)  # training images among the verification images
    try:
        if among and len(untrained) >= FAMILIARITY_MIN_IMAGES:  # enough held out: the threshold is theirs alone
            images, _ = load_labelled([paths[i] for i in untrained], [names[i] for i in untrained], card)
            features, among = None, 0
        else:
            images, features = held_out.images, held_out.outputs
        training, labels = load_labelled(*_familiar_images(run_dir, calibration_data, card), card, "training")
        fitted = fit(model, training, labels, images, held_out_features=features)
    except FamiliarityUnavailable as exc:
        return None, {"added": False, "why": str(exc)}, held_out.images
    fitted = dataclasses.replace(fitted, record=fitted.record | {"threshold_training_images": among})  # on the card
    return fitted, {"added": True, **fitted.record}, images


def _familiar_images(run_dir: Path, calibration_data: str | os.PathLike[str] | None,
                     card: ModelCard) -> tuple[list[str], list[str]]:
    """The images unfamiliarity is measured from: the run's training split, whatever ``--calibration`` says (that
    is FP16's and INT8's; blood smears given there for a chest model made every smear familiar). A run whose
    training images are not to be had (none recorded, or moved) takes the calibration images, if they are of the
    model's classes."""
    try:
        return chosen_images(run_dir, None, "train", "--calibration", FIT_IMAGES)
    except FileNotFoundError as exc:  # none recorded, or none where it says (moved, another machine)
        if calibration_data is None:
            raise FamiliarityUnavailable(f"{exc} of the model's own kind") from None
    paths, names = chosen_images(run_dir, calibration_data, "train", "--calibration", FIT_IMAGES)
    if foreign := sorted({name for name in names if class_on_path(name, card.labels) is None}):
        raise FamiliarityUnavailable(f"the run's training images are not to be had, and {calibration_data} holds "
                                     f"classes that are not the model's ({', '.join(foreign[:3])})")
    return paths, names


def _trained_paths(run_dir: Path) -> set[str]:
    """The run's recorded training images (none where it recorded no split)."""
    try:
        return set(recorded(run_dir, "train")[0])
    except FileNotFoundError:
        return set()


def _familiarity_as_computed(candidate: Path, images: np.ndarray, card: ModelCard) -> list[float]:
    """Set an FP16 or INT8 file's unfamiliarity again on ``images`` — where FP32's threshold was set — as that
    file computes its features (:mod:`.depth_weights`: a quantized feature map can sit far from the float one);
    the depths' weights, for the report."""
    return list(set_again_on(candidate, images, len(card.labels), FAMILIARITY_QUANTILE, "medclf_precision"))


def failed_files(report: dict) -> list[tuple[str, list[str]]]:
    """``(file, reasons)`` for every ONNX file or engine in the report that failed verification."""
    failed = []
    for entry in report["precisions"].values():
        for item in (entry, entry.get("tensorrt")):
            if item is not None and not item["passed"]:
                failed.append((item["file"], item["failures"]))
    return failed


def _passed(entry: dict) -> bool:
    return entry["passed"] and entry.get("tensorrt", {"passed": True})["passed"]


def _engine(onnx_file: Path, final: Path, precision: str, profile: BatchProfile, held_out: HeldOut) -> dict:
    """Build (or reuse from the cache) the TensorRT engine for ``onnx_file``, verify it like an ONNX file, and
    publish it as ``final`` (``.plan`` next to the precision's ONNX file). An ``onnx_file`` still in the work
    folder (INT8's TensorRT flavour) is published beside it, so ``medclf-run --backend tensorrt`` can be given
    the very file the engine was built and verified from (and finds that engine in the cache)."""
    source = final.with_name(onnx_file.name)
    entry = {"file": str(final), "onnx": str(source), "profile": dataclasses.asdict(profile)}
    try:
        plan = EngineCache().engine_for(onnx_file, precision, profile)
        probabilities = TensorRTEngine(plan).predict(held_out.images)
    except Exception as exc:  # noqa: BLE001 — TensorRT could not parse, build or run it (whatever it raised):
        # this engine fails, the export goes on (one raised past here left the export half-published)
        said = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"  # ours name the file
        return entry | {"passed": False, "failures": [said]}
    comparison = held_out.compare(probabilities, precision)
    if comparison.passed:
        with atomic_write(final, "wb") as published, open(plan, "rb") as built:
            shutil.copyfileobj(built, published)
        if onnx_file != source:
            os.replace(onnx_file, source)
    return entry | {"cached_as": str(plan), **comparison.to_dict()}


def triton_name(model_path: Path) -> str:
    """The Triton model a run's files are served as: its run folder's name, in the letters Triton takes."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", model_path.resolve().parent.name)


def _served_from_another_run(repo: Path, model_path: Path) -> str | None:
    """Why this export may not write its Triton model: ``REPO/NAME`` serves a model exported from another run
    folder of the same name (two projects' ``runs/latest``), which it would replace without a word. A model of
    this run folder, trained again, is replaced as asked."""
    served = repo / triton_name(model_path) / "1" / "model.onnx"
    theirs = found.source.get("run_dir") if (found := card_of_file(served)) is not None else None
    ours = str(model_path.resolve().parent)
    if theirs is None or theirs == ours:
        return None
    return (f"--triton {repo}: its model {served.parent.parent.name} serves the model of {theirs}, which this "
            f"export of {ours} would replace; give another repository, or rename this run's folder")


def _triton(repo: Path, name: str, report: dict, card: ModelCard, max_batch: int) -> list[str]:
    """One Triton model per published file: NAME (fp32), NAME_fp16, NAME_int8, NAME_tensorrt_fp16, ...; a NAME,
    NAME_fp16 or NAME_int8 of an earlier model of this run folder that this export does not replace is removed
    (one of another run folder — a run named NAME_int8 — is its own, and stays), and so is the
    NAME_tensorrt_* of a file replaced without an engine of its own (``report["removed"]``)."""
    written = []
    for precision, entry in report["precisions"].items():
        onnx_model = name + ("" if precision == "fp32" else f"_{precision}")
        engine_model = repo / f"{name}_tensorrt_{precision}"
        if entry["passed"]:
            written.append(write_model(repo, onnx_model, entry["file"], entry["file"], max_batch))
        if entry.get("tensorrt", {}).get("passed"):
            written.append(write_model(repo, engine_model.name, entry["tensorrt"]["file"], entry["file"], max_batch))
        elif entry["passed"] and engine_model.is_dir():  # built from the file NAME_<precision> no longer holds
            shutil.rmtree(engine_model)
            report["removed"].append(str(engine_model))
    published = {precision for precision, entry in report["precisions"].items() if entry["passed"]}
    for precision in sorted(set(PRECISIONS) - published):
        stale = repo / (name if precision == "fp32" else f"{name}_{precision}")  # another model's, served beside
        served = stale / "1" / "model.onnx"  # ... of this run folder (a run named NAME_int8 serves its own there)
        other = _another_models_card(served, card) if served.is_file() else None
        if other is not None and other.source.get("run_dir") == card.source.get("run_dir"):
            shutil.rmtree(stale)
            report["removed"].append(str(stale))
    return [str(path) for path in written]


def _with_fp32(precisions: tuple[str, ...]) -> tuple[str, ...]:
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision {', '.join(sorted(unknown))}; choose from {', '.join(PRECISIONS)}")
    return tuple(p for p in PRECISIONS if p == "fp32" or p in precisions)


def _converters(run_dir: Path, calibration_data: str | os.PathLike[str] | None, card: ModelCard,
                precisions: tuple[str, ...]) -> Converters:
    """FP16's converter and INT8's quantizer, where either is asked for, on one reader of the run's training
    images (or ``calibration_data``), decoded once: FP16 rounds its weights to keep outputs on them, INT8 calibrates."""
    if not {"fp16", "int8"} & set(precisions):
        return {}
    paths, _ = chosen_images(run_dir, calibration_data, "train", "--calibration", CALIBRATION_IMAGES)
    reader = ImageCalibrationReader(paths, card.preprocess)
    return {"fp16": Fp16Converter(reader), "int8": Int8Quantizer(reader)}


def model_card(model_path: Path, cam: bool = False) -> ModelCard:
    """Labels, preprocessing, operating threshold and metrics from the run directory ``medclf train`` wrote."""
    run = RunDir.of_model(model_path)
    metrics = run.metrics
    chosen = metrics.get("validation", {}).get("threshold")
    if run.decision is None and len(run.labels) == 2 and chosen not in (None, 0.5):  # the file would call at 0.5
        raise FileNotFoundError(f"{run.path / 'decision.json'}: missing, and the run chose its threshold "
                                f"({chosen:.3g}) on validation images: without it the exported file would call at "
                                "0.5, not as the run was scored; put it back (or train again)")
    return ModelCard(labels=run.labels, preprocess=run.preprocess, precision="fp32", source=provenance(model_path),
                     metrics={k: metrics[k] for k in ("test", "validation", "training") if k in metrics},
                     decision=run.decision, outputs={CAM_NAME: CAM_DESCRIPTION} if cam else {})
