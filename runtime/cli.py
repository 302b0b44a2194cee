"""``medclf-run``: classify images with an exported medclf model. Imports only ``medclf.runtime``."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from .atomic import atomic_write
from .backends import BackendUnavailable
from .classifier import Classifier, Prediction
from .inputs import expand_inputs
from .modelcard import ModelCardError

PROGRESS_FROM = 32  # inputs; below this the answer comes before a bar would be worth drawing

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def run(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs (quote globs).")],
    model: Annotated[Optional[Path], typer.Option(help="A medclf ONNX model; default: the packaged blood-cell model.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many labels to report per image.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input per line.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference call.")] = 16,
    threads: Annotated[Optional[int], typer.Option(min=1, help="onnxruntime intra-op threads.")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", dir_okay=False, help="Also write every result to this CSV file (atomically, when done).")] = None,
    cam: Annotated[Optional[Path], typer.Option("--cam", file_okay=False, help="Write a heatmap overlay per image here (models exported with medclf export --cam).")] = None,
    backend: Annotated[str, typer.Option(help="auto (the first of tensorrt, ort-tensorrt, cuda, cpu that starts; says which), or one of them: then it must start.")] = "auto",
) -> None:
    """Classify INPUTS; exit status 1 when any input could not be classified."""
    try:
        classifier = Classifier(model, threads=threads, backend=backend)
        if classifier.backend.note:
            typer.echo(classifier.backend.note, err=True)
        if cam is not None:
            classifier.require_cam()  # refused before any work
    except (FileNotFoundError, ModelCardError, BackendUnavailable, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    top_k = min(top_k, len(classifier.labels))
    paths = list(expand_inputs(inputs))
    predictions = _with_progress(classifier.classify(paths, top_k=top_k, batch_size=batch_size, cam_dir=cam),
                                 len(paths))
    results: list[Prediction] = []
    recorded = _recording(predictions, results) if csv_file is not None else predictions
    failed = _print_json(recorded) if as_json else _print_table(recorded)
    if csv_file is not None:
        write_csv(csv_file, results)
    raise typer.Exit(1 if failed else 0)


def _with_progress(predictions: Iterable[Prediction], total: int) -> Iterable[Prediction]:
    """A progress bar on stderr for long runs in a terminal; nothing when stderr is a pipe or a log file."""
    if total <= PROGRESS_FROM or not sys.stderr.isatty():
        return predictions
    from rich.console import Console  # rich is imported only where it draws: one-shot --json runs start faster
    from rich.progress import track

    return track(predictions, total=total, description="classifying", console=Console(stderr=True), transient=True)


def _recording(predictions: Iterable[Prediction], into: list[Prediction]) -> Iterator[Prediction]:
    for prediction in predictions:
        into.append(prediction)
        yield prediction


def write_csv(path: Path, predictions: list[Prediction]) -> None:
    """One row per input: path, label, probability, top_k as ``label:p;label:p``, heatmap, error."""
    with atomic_write(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "probability", "top_k", "heatmap", "error"])
        for p in predictions:
            top_k = ";".join(f"{label}:{probability:.6f}" for label, probability in p.top_k)
            probability = "" if p.probability is None else f"{p.probability:.6f}"
            writer.writerow([p.path, p.label or "", probability, top_k, p.heatmap or "", p.error or ""])


def _print_json(predictions: Iterable[Prediction]) -> int:
    failed = 0
    for prediction in predictions:
        failed += prediction.error is not None
        sys.stdout.write(json.dumps(prediction.to_dict()) + "\n")
        sys.stdout.flush()
    return failed


def _print_table(predictions: Iterable[Prediction]) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("file", overflow="fold")  # a path is never cut short with an ellipsis
    for name in ("label", "probability", "others"):
        table.add_column(name)
    errors = Console(stderr=True, soft_wrap=True)  # one line per failed input
    failed = 0
    for prediction in predictions:
        if prediction.error is not None:
            failed += 1
            errors.print(f"[red]error[/red] {escape(prediction.path)}: {escape(prediction.error)}", highlight=False)
            continue
        others = ", ".join(f"{label} {p:.3f}" for label, p in prediction.top_k[1:])
        table.add_row(escape(prediction.path), escape(prediction.label), f"{prediction.probability:.3f}",
                      escape(others))
    if table.row_count:  # piped output is not squeezed to 80 columns
        Console(width=None if sys.stdout.isatty() else 100_000).print(table)
    return failed


def main() -> None:
    app()


if __name__ == "__main__":
    main()
