"""What a medclf ONNX file says about itself: labels, preprocessing, precision, provenance, metrics.

The keys are the contract between ``medclf.export`` (which writes them into ``metadata_props``) and the runtime
(which refuses a file that lacks them), so a model can never be served with the wrong labels or preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .preprocess import Preprocess

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

LABELS_KEY = "medclf.labels"
PREPROCESS_KEY = "medclf.preprocess"
PRECISION_KEY = "medclf.precision"
SOURCE_KEY = "medclf.source"
METRICS_KEY = "medclf.metrics"


class ModelCardError(ValueError):
    """The ONNX file is not a medclf model (metadata missing or malformed)."""


@dataclass(frozen=True)
class ModelCard:
    """The metadata of one exported model, parsed and checked."""

    labels: tuple[str, ...]
    preprocess: Preprocess
    precision: str = "fp32"
    source: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` strings to store in an ONNX file."""
        return {
            LABELS_KEY: json.dumps(list(self.labels)),
            PREPROCESS_KEY: self.preprocess.to_json(),
            PRECISION_KEY: self.precision,
            SOURCE_KEY: json.dumps(self.source, sort_keys=True),
            METRICS_KEY: json.dumps(self.metrics, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "model") -> "ModelCard":
        missing = [key for key in (LABELS_KEY, PREPROCESS_KEY) if key not in metadata]
        if missing:
            raise ModelCardError(f"{source}: not a medclf model, metadata lacks {', '.join(missing)}")
        try:
            labels = tuple(str(label) for label in json.loads(metadata[LABELS_KEY]))
            preprocess = Preprocess.from_json(metadata[PREPROCESS_KEY])
            extras = {key: json.loads(metadata.get(key) or "{}") for key in (SOURCE_KEY, METRICS_KEY)}
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelCardError(f"{source}: malformed medclf metadata ({exc})") from None
        if not labels:
            raise ModelCardError(f"{source}: medclf.labels is empty")
        return cls(labels=labels, preprocess=preprocess, precision=metadata.get(PRECISION_KEY, "fp32"),
                   source=extras[SOURCE_KEY], metrics=extras[METRICS_KEY])
