"""Progress bars on stderr, drawn only where someone watches them: in a terminal.

In a log file or a pipe a transient bar draws nothing, yet leaves a blank line behind each time it stops (four
before a run's first epoch line). Kept free of Keras, so data loading can use it without loading TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from rich.console import Console
from rich.progress import track as rich_track

T = TypeVar("T")


def stderr_console() -> Console:
    return Console(stderr=True, markup=False, emoji=False)  # class names and paths are the user's, not markup


def track(sequence: Iterable[T] | Sequence[T], description: str, total: float | None = None) -> Iterable[T]:
    """``sequence``, with a transient bar on stderr while it is consumed, in a terminal only."""
    console = stderr_console()
    return rich_track(sequence, description, total=total, console=console, transient=True,
                      disable=not console.is_terminal)
