"""``medclf-run``: classify images with an exported medclf model. Imports only ``medclf.runtime``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .classifier import Classifier, Prediction
from .inputs import expand_inputs
from .modelcard import ModelCardError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def run(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs (quote globs).")],
    model: Annotated[Optional[Path], typer.Option(help="A medclf ONNX model; default: the packaged blood-cell model.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many labels to report per image.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per input per line.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference call.")] = 16,
    threads: Annotated[Optional[int], typer.Option(min=1, help="onnxruntime intra-op threads.")] = None,
) -> None:
    """Classify INPUTS; exit status 1 when any input could not be classified."""
    try:
        classifier = Classifier(model, threads=threads)
    except (FileNotFoundError, ModelCardError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    top_k = min(top_k, len(classifier.labels))
    predictions = classifier.classify(expand_inputs(inputs), top_k=top_k, batch_size=batch_size)
    failed = _print_json(predictions) if as_json else _print_table(predictions)
    raise typer.Exit(1 if failed else 0)


def _print_json(predictions: Iterable[Prediction]) -> int:
    failed = 0
    for prediction in predictions:
        failed += prediction.error is not None
        sys.stdout.write(json.dumps(prediction.to_dict()) + "\n")
        sys.stdout.flush()
    return failed


def _print_table(predictions: Iterable[Prediction]) -> int:
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
        table.add_row(escape(prediction.path), escape(prediction.label), f"{prediction.probability:.3f}", escape(others))
    if table.row_count:  # piped output is not squeezed to 80 columns
        Console(width=None if sys.stdout.isatty() else 100_000).print(table)
    return failed


def main() -> None:
    app()


if __name__ == "__main__":
    main()
