"""What a medclf ONNX file says about itself: labels, preprocessing, precision, provenance, metrics.

The keys are the contract between ``medclf.export`` (which writes them into ``metadata_props``) and the runtime
(which refuses a file that lacks them), so a model can never be served with the wrong labels or preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .decision import Decision
from .preprocess import Preprocess

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
CAM_NAME = "cam"  # optional output: class activation maps, [batch, h, w, classes]
FAMILIARITY_NAME = "unfamiliarity"  # optional output: how unlike the training images, [batch, 1]; above 1: warn
FAMILIARITY_QUANTILE = 0.995  # where its 1 is set: held-out images beyond it, 1 in 200, by construction
FAMILIARITY_MIN_IMAGES = 64  # fewer images (held out at export, or a site's) do not place that percentile

LABELS_KEY = "medclf.labels"
PREPROCESS_KEY = "medclf.preprocess"
PRECISION_KEY = "medclf.precision"
SOURCE_KEY = "medclf.source"
METRICS_KEY = "medclf.metrics"
DECISION_KEY = "medclf.decision"  # binary models only: the operating threshold chosen on validation data
OUTPUTS_KEY = "medclf.outputs"  # extra outputs beyond probabilities: name → what it holds


def unlike(unfamiliarity: np.ndarray | float) -> np.ndarray:
    """Which ``unfamiliarity`` values say an image is unlike the model's training images: above 1, or NaN — a
    distance that came out NaN (an FP16 file exported before 2026-12-07 could overflow) measured nothing
    familiar either."""
    return ~(np.asarray(unfamiliarity) <= 1)


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
    decision: Decision | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """The ``metadata_props`` strings to store in an ONNX file."""
        optional = {DECISION_KEY: self.decision.to_json()} if self.decision is not None else {}
        if self.outputs:
            optional[OUTPUTS_KEY] = json.dumps(self.outputs, sort_keys=True)
        return optional | {
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
            labels = _json_of(metadata, LABELS_KEY, list)
            preprocess = Preprocess.from_json(metadata[PREPROCESS_KEY])
            extras = {key: _json_of(metadata, key, dict) for key in (SOURCE_KEY, METRICS_KEY, OUTPUTS_KEY)}
            decision = Decision.from_json(metadata[DECISION_KEY]) if DECISION_KEY in metadata else None
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelCardError(f"{source}: malformed medclf metadata ({exc})") from None
        if problem := labels_problem(labels):
            raise ModelCardError(f"{source}: medclf.labels {problem}")
        labels = tuple(labels)
        if decision is not None and (len(labels) != 2 or decision.positive_class not in labels):
            raise ModelCardError(f"{source}: medclf.decision names {decision.positive_class!r}, "
                                 f"which is not one of the two labels {list(labels)}")
        return cls(labels=labels, preprocess=preprocess, precision=metadata.get(PRECISION_KEY, "fp32"),
                   source=extras[SOURCE_KEY], metrics=extras[METRICS_KEY], decision=decision,
                   outputs=extras[OUTPUTS_KEY])

    @classmethod
    def from_proto(cls, model, source: str = "model") -> "ModelCard":
        """The card of an ONNX ``ModelProto`` loaded with the onnx package (export and training edit files so;
        the runtime reads a session's metadata instead and never imports onnx)."""
        return cls.from_metadata({prop.key: prop.value for prop in model.metadata_props}, source)


def labels_problem(labels: list) -> str | None:
    """What makes ``labels`` unusable as a classifier's classes, or None: fewer than two (a sigmoid unit's one
    label served every film as that label), one that is not a non-empty string (``null`` was served as "None"),
    or one named twice (two classes no answer can tell apart)."""
    if len(labels) < 2:
        return f"names {len(labels)} class{'es' * (len(labels) != 1)}; a classifier needs at least two"
    if bad := [label for label in labels if not isinstance(label, str) or not label]:
        return f"holds {json.dumps(bad[0])}, which is not a class name"
    if twice := sorted({label for label in labels if labels.count(label) > 1}):
        return f"names {twice[0]!r} twice"
    return None


def _json_of(metadata: dict[str, str], key: str, kind: type) -> list | dict:
    """``metadata[key]`` parsed, which must be a JSON ``kind`` (list or dict; an absent key: an empty one) — a
    string there would be split into characters, a null fail far from here."""
    value = json.loads(metadata[key]) if metadata.get(key) else kind()
    if not isinstance(value, kind):
        raise ValueError(f"{key} is {type(value).__name__}, not a JSON {'array' if kind is list else 'object'}")
    return value


def familiarity_site(card: ModelCard) -> str | None:
    """The site whose images a calibrated copy's unfamiliarity was set on, or None (the training site's)."""
    site = card.metrics.get("site", {})
    return site.get("familiarity_set_at") or (site.get("data") if site.get("familiarity", {}).get("weights") else None)


def familiarity_trained_among(card: ModelCard) -> int:
    """How many training images set the unfamiliarity threshold beside the held-out ones (a run that held out
    too few: the threshold sits tighter), as export recorded it; 0 where none did."""
    return card.metrics.get("familiarity", {}).get("threshold_training_images", 0)
