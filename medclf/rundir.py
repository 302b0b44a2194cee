"""RUN_DIR, the contract between ``medclf train`` (which writes it) and evaluate/export/explain (which read it).

One place knows the file names, so the readers cannot drift apart. Plain JSON and the runtime's own types: no
TensorFlow here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medclf.runtime.decision import Decision
from medclf.runtime.describe import file_sha256
from medclf.runtime.modelcard import labels_problem
from medclf.runtime.preprocess import Preprocess

MODEL = "model.keras"
LABELS = "labels.json"
PREPROCESS = "preprocess.json"
DECISION = "decision.json"  # binary tasks: the operating threshold chosen on validation data
METRICS = "metrics.json"
SPLITS = "splits.json"  # the training, held-out validation and test files: export calibrates and verifies on them
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.keras"  # the best model so far, written during training (a crash keeps it)
EVALUATION = "evaluation-{data}"  # medclf evaluate's default folder in the run, per dataset scored


def numbered(default: Path, folder: bool = False, most: int = 999) -> Iterator[Path]:
    """``default``, then ``default-2``, ``-3``... (a file's number before its suffix: ``model.site-2.onnx``; a
    folder's after its whole name): where a record of another site, data set or model would otherwise be
    replaced."""
    yield default
    for k in range(2, most + 1):
        yield default.with_name(f"{default.name}-{k}" if folder else f"{default.stem}-{k}{default.suffix}")


def _written_decision(text: str) -> Decision:
    """A ``decision.json``: medclf's, or written by hand, whose threshold was chosen by no rule medclf knows."""
    fields = json.loads(text)
    if not isinstance(fields, dict):
        raise ValueError("must be a JSON object: {\"positive_class\": ..., \"threshold\": ...}")
    if unknown := sorted(set(fields) - {"positive_class", "threshold", "rule"}):
        raise ValueError(f"unknown field {unknown[0]!r} (a decision has positive_class, threshold and rule)")
    return Decision.from_json(text, rule="given in decision.json")


@dataclass(frozen=True)
class RunDir:
    """A run directory on disk, read lazily file by file."""

    path: Path

    @classmethod
    def of_model(cls, model_path: str | os.PathLike[str]) -> "RunDir":
        """The run directory that holds ``model_path``; refuses a folder ``medclf train`` did not write."""
        run = cls(Path(model_path).parent)
        for name in (LABELS, PREPROCESS):
            if not (run.path / name).is_file():
                raise FileNotFoundError(f"{run.path / name}: missing; expected a run directory from medclf train")
        return run

    @classmethod
    def of_export(cls, source: dict[str, str]) -> "RunDir | None":
        """The run directory an exported file came from (its card's ``source``: ``run_dir``), where that still
        holds the very Keras model exported (``keras_sha256``); None where it moved, was trained again, or the
        file predates the record. Evaluation then knows what the file was trained and validated on."""
        run, digest = source.get("run_dir"), source.get("keras_sha256")
        model = Path(run) / MODEL if run else None
        if model is None or not digest or not model.is_file():
            return None
        if file_sha256(model) != digest:
            return None
        try:
            return cls.of_model(model)
        except FileNotFoundError:  # the model without its run's files: nothing to check against
            return None

    @property
    def labels(self) -> tuple[str, ...]:
        labels = self._json(LABELS)
        if problem := labels_problem(labels) if isinstance(labels, list) else "is not a JSON list":
            raise ValueError(f"{self.path / LABELS}: {problem}")
        return tuple(labels)

    @property
    def preprocess(self) -> Preprocess:
        return self._parsed(PREPROCESS, Preprocess.from_json)

    @property
    def decision(self) -> Decision | None:
        """The run's operating point, checked against its labels (a hand-written ``decision.json`` naming
        ``pneumonia`` for ``PNEUMONIA`` was refused later, naming a temporary file)."""
        if not (self.path / DECISION).is_file():
            return None
        decision = self._parsed(DECISION, _written_decision)
        labels = self.labels
        if len(labels) != 2:
            raise ValueError(f"{self.path / DECISION}: a threshold is for a model of two classes; {LABELS} names "
                             f"{len(labels)}")
        if decision.positive_class not in labels:
            raise ValueError(f"{self.path / DECISION}: names {decision.positive_class!r}, which is not one of the "
                             f"two labels {list(labels)} in {LABELS}")
        return decision

    @property
    def trained_by_medclf(self) -> bool:
        """Whether ``medclf train`` wrote this folder: it records its splits before fitting, so a checkpoint
        left by a stopped run counts; a folder written by hand for a model trained elsewhere has none."""
        return (self.path / SPLITS).is_file()

    def _parsed(self, name: str, parse: Callable[[str], Any]) -> Any:
        """``parse`` of file ``name``; what it refuses, said of the file (a hand-written one, for a model medclf
        did not train)."""
        file = self.path / name
        text = file.read_text()
        try:
            return parse(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{file}: {exc}") from None

    @property
    def metrics(self) -> dict[str, Any]:
        return self._json(METRICS) if (self.path / METRICS).is_file() else {}

    @property
    def recipe(self) -> dict[str, Any]:
        """The recipe the run was trained with, as ``metrics.json`` records it (empty for runs that did not)."""
        return self.metrics.get("training", {}).get("recipe", {})

    def split(self, name: str) -> tuple[list[str], list[int]]:
        """Paths and labels of a recorded split: "train", "val" or "test" (runs given one)."""
        splits = self._json(SPLITS) if (self.path / SPLITS).is_file() else {}
        if name not in splits:
            raise FileNotFoundError(f"{self.path / SPLITS}: this run did not record its {name!r} split")
        part = splits[name]
        return list(part["paths"]), [int(label) for label in part["labels"]]

    def _json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())
