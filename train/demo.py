"""``medclf demo``: the whole pipeline once, on real white-blood-cell images, in a few CPU minutes.

Train a small transfer-learning model on a subset of blood-cells/TRAIN → export to ONNX and verify it against
Keras → classify the unseen blood-cells/TEST folder with the runtime alone → print what happened.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import accuracy_score, recall_score

from medclf.runtime import Classifier
from medclf.runtime.classifier import Prediction
from medclf.runtime.stream import use_processes

from .copies import detected_copies
from .data import ImageFolder, read_folder
from .fit import FitConfig
from .intervals import intervals_of_calls
from .pipeline import train
from .presets import PRESETS

DEMO_PRECISIONS = ("fp32", "fp16", "int8")


def default_data() -> Path:
    """The shared datasets beside the repository (``../shared/data`` from the repo root)."""
    return Path.cwd().parent / "shared" / "data" / "blood-cells"


def run_demo(data: Path, out: Path, per_class: int = 400, console: Console | None = None) -> dict:
    console = console or Console(markup=False, emoji=False)
    from medclf.export.pipeline import export_run, failed_files
    from medclf.export.report import computed_lines, export_table, familiarity_lines, search_lines
    from medclf.export.verify import VerificationError

    # The preset's recipe, shortened for a demo: 10 epochs, and only blocks 13-16 fine-tuned (half the time).
    recipe = dataclasses.replace(PRESETS["blood-cells"], freeze_until=None,
                                 fit=FitConfig(epochs=10, augment_views=1, wise=1.0))
    console.rule(f"1/3 train: MobileNetV2 (ImageNet) at {recipe.image_size} px on the stained nucleus, "
                 f"blocks 13-16 fine-tuned")
    result = train(data / "TRAIN", out / "run", recipe, limit_per_class=per_class)
    val = result.metrics["validation"]
    console.print(f"trained on {result.metrics['training']['train_images']} images in {result.seconds:.0f} s; "
                  f"validation accuracy {val['accuracy']:.3f}")

    console.rule("2/3 export: ONNX FP32, FP16, INT8 (uint8 in, labels + preprocessing inside), each verified")
    # Not strict: a reduced precision that fails its tolerance is reported and left unpublished; FP32 must pass.
    report = export_run(out / "run" / "model.keras", out / "exported", precisions=DEMO_PRECISIONS, strict=False)
    console.print(export_table(report))
    for line in search_lines(report) + computed_lines(report) + familiarity_lines(report):
        console.print(line, highlight=False)
    for file, reasons in failed_files(report):
        console.print(f"not published: {Path(file).name}: {'; '.join(reasons)}", highlight=False)
    if not report["precisions"]["fp32"]["passed"]:
        raise VerificationError("; ".join(report["precisions"]["fp32"]["failures"]))

    console.rule("3/3 run: classify the unseen TEST folder with medclf.runtime (onnxruntime, no TensorFlow)")
    return _score_test(Path(report["precisions"]["fp32"]["file"]), data / "TEST", console)


def _score_test(model: Path, test: Path, console: Console) -> dict:
    classifier = Classifier(model)
    folder = read_folder(test, classifier.labels)
    index = {label: i for i, label in enumerate(classifier.labels)}
    start = time.perf_counter()
    predictions = list(classifier.classify(folder.paths, top_k=len(index), batch_size=32,
                                           processes=use_processes(len(folder))))
    predicted = [index.get(p.label, -1) for p in predictions]  # -1: failed
    seconds = time.perf_counter() - start
    recalls = recall_score(folder.labels, predicted, labels=list(index.values()), average=None, zero_division=0)
    table = Table("class", "images", "recall")
    for (label, count), recall in zip(folder.class_counts().items(), recalls):
        table.add_row(label, str(count), f"{recall:.3f}")
    console.print(table)
    accuracy = float(accuracy_score(folder.labels, predicted))
    interval = _interval(folder, predictions, np.asarray(predicted), index)
    console.print(f"test accuracy {accuracy:.3f} on {len(folder)} images{interval}; "
                  f"{len(folder) / seconds:.0f} images/s including decode ({seconds:.1f} s)")
    if classifier.says_unfamiliar:
        unlike = sum(p.unlike_training for p in predictions)
        console.print(f"{unlike} of the {len(folder)} TEST images ({unlike / len(folder):.1%}) are unlike the "
                      "training images by the model's unfamiliarity output (of held-out images like them, 0.5%)")
    console.print(f"try it: .venv/bin/medclf-run --model {model} {test}/EOSINOPHIL --top-k 2")
    return {"accuracy": accuracy, "images": len(folder), "seconds": seconds}


def _interval(folder: ImageFolder, predictions: list[Prediction], predicted: np.ndarray, index: dict[str, int]) -> str:
    """' (95% confidence interval 0.70-0.93 over the 100 cells they are copies of)': TEST is augmented copies
    of 100 cells, so those, not its images, are what the accuracy was measured on (``medclf.train.intervals``)."""
    scored = [i for i, p in enumerate(predictions) if p.error is None]
    probabilities = np.zeros((len(scored), len(index)))
    for row, i in enumerate(scored):
        for label, probability in predictions[i].top_k:
            probabilities[row, index[label]] = probability
    labels, calls = folder.labels[scored], predicted[scored]
    groups = detected_copies(tuple(folder.paths[i] for i in scored), labels)
    intervals = intervals_of_calls(labels, probabilities, calls, tuple(index), groups)
    if intervals is None:
        return ""
    low, high = intervals["accuracy"]
    over = f"the {intervals['sources']} cells they are copies of" if groups is not None else "its images"
    return f" (95% confidence interval {low:.3f}-{high:.3f} over {over})"
