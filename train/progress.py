"""A rich progress display for ``model.fit``: a live bar over epochs and batches, and one line per epoch that
stays on screen (and in logs, where no live bar is drawn)."""

from __future__ import annotations

import keras
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .bars import stderr_console

SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")


class RichProgress(keras.callbacks.Callback):
    def __init__(self, stage: str, epochs: int, console: Console | None = None) -> None:
        super().__init__()
        self.stage, self.epochs = stage, epochs
        self.console = console or stderr_console()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"), console=self.console,
                                 transient=True, disable=not self.console.is_terminal)  # see medclf.train.bars
        self._batches = None

    def on_train_begin(self, logs=None) -> None:
        self.progress.start()

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        steps = self.params.get("steps")
        self._batches = self.progress.add_task(f"{self.stage} epoch {epoch + 1}/{self.epochs}", total=steps,
                                               metrics="")

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.progress.update(self._batches, completed=batch + 1, metrics=_format(logs))

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.progress.remove_task(self._batches)
        self.console.print(f"{self.stage} epoch {epoch + 1}/{self.epochs}: {_format(logs)}", highlight=False,
                           soft_wrap=True)

    def on_train_end(self, logs=None) -> None:
        self.progress.stop()


def _format(logs: dict | None) -> str:
    logs = logs or {}
    return "  ".join(f"{name} {float(logs[name]):.4f}" for name in SHOWN if name in logs)
