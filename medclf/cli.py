"""The ``medclf`` command's entry point. Its commands (train, evaluate, export, benchmark, ...) need the train
extra; the runtime alone (``pip install medclf``, what a Jetson installs) still puts ``medclf`` on the path, where
it said ``ModuleNotFoundError: No module named 'typer'`` in a traceback: it says what to install instead."""

from __future__ import annotations

import importlib.util
import sys


def main() -> None:
    if importlib.util.find_spec("typer") is None:
        print("error: medclf's commands (train, evaluate, export, benchmark, ...) need the train extra: "
              "pip install 'medclf[train]'; classifying needs only medclf-run", file=sys.stderr)
        sys.exit(2)
    from medclf.train.cli import main as commands

    commands()
