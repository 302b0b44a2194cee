"""A wall-clock budget for one training run.

The defaults must finish in bounded time on data nobody has measured — 500 images or 150,000 — on a 2-core CPU.
Rather than guessing epochs from the dataset's size, the run watches the clock: data too large is sampled first
(``sizing.py``), augmented views for the feature cache are cut to what half the remaining time affords, and a
stage ends when its next epoch would not finish in time (the slowest epoch so far is the estimate), or
mid-epoch when no time is left at all. What must happen after fitting — scoring the validation and test images,
writing the run — is reserved up front, so the run as a whole ends in time, not just its fitting. Every cut is
logged and kept in ``metrics.json``.
"""

from __future__ import annotations

import logging
import math
import time

import keras

log = logging.getLogger(__name__)


class TimeBudget:
    """``minutes`` of wall clock from ``started`` (a ``time.monotonic()`` reading; default now); None: unlimited."""

    def __init__(self, minutes: float | None, started: float | None = None) -> None:
        self.minutes = minutes
        self.started = time.monotonic() if started is None else started
        self.cuts: list[str] = []  # what the budget changed, for the user and metrics.json
        self.reserved = 0.0  # seconds kept for the work after fitting

    def left(self) -> float:
        """Seconds left for fitting (infinite without a budget)."""
        if self.minutes is None:
            return math.inf
        return self.started + 60 * self.minutes - self.reserved - time.monotonic()

    def reserve(self, seconds: float) -> None:
        """Keep ``seconds`` of the budget for work that comes after fitting."""
        self.reserved += seconds

    def affordable(self, wanted: int, seconds_each: float, share: float) -> int:
        """How many of ``wanted`` steps of ``seconds_each`` fit in ``share`` of the time left."""
        left = self.left()
        if left == math.inf or seconds_each <= 0:
            return wanted
        return max(0, min(wanted, int(share * left // seconds_each)))

    def cut(self, text: str) -> None:
        self.cuts.append(text)
        log.warning("time budget (%g min, --time-budget to change): %s", self.minutes, text)

    def callback(self, stage: str) -> keras.callbacks.Callback:
        return _StopBeforeDeadline(self, stage)


class _StopBeforeDeadline(keras.callbacks.Callback):
    """Ends a ``fit`` when its next epoch would end past the budget; early stopping still restores its best."""

    def __init__(self, budget: TimeBudget, stage: str) -> None:
        super().__init__()
        self.budget, self.stage = budget, stage
        self.slowest = 0.0
        self._began = 0.0
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._began = time.monotonic()
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # The first epoch of a stage has no estimate yet: on data far larger than the budget it is cut short.
        if not self.model.stop_training and self.budget.left() < 0:
            self.model.stop_training = True  # Keras ends the epoch after this batch, validates, then stops
            self.budget.cut(f"{self.stage} stopped in epoch {self._epoch + 1} after batch {batch + 1} of "
                            f"{self.params.get('steps') or '?'}: no time left")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.slowest = max(self.slowest, time.monotonic() - self._began)
        last = self.params.get("epochs", 0)
        if epoch + 1 < last and not self.model.stop_training and self.budget.left() < self.slowest:
            self.model.stop_training = True
            self.budget.cut(f"{self.stage} stopped after epoch {epoch + 1} of {last} "
                            f"({self.slowest:.0f} s per epoch, {max(0.0, self.budget.left()):.0f} s left)")
