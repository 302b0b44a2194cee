"""How probabilities become a call, written once for evaluation and serving.

A multi-class model answers with its most probable class. A binary screening model answers "positive" when the
probability of the finding reaches a threshold chosen on validation data (by Youden's J, or for a sensitivity
the clinic asks for), and that threshold travels inside the exported model, so the runtime makes the same call
the evaluation measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    """Binary operating point: call ``positive_class`` when its probability is at least ``threshold``."""

    positive_class: str
    threshold: float
    rule: str = "youden"  # how the threshold was chosen, for people reading the model card

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:  # NaN too: a threshold of 50 (a percentage) called every film negative
            raise ValueError(f"the threshold must be a probability, from 0 to 1, not {self.threshold}")

    def predict(self, probabilities: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Class indices ``[N]`` for probabilities ``[N, 2]`` ordered like ``labels``."""
        positive = list(labels).index(self.positive_class)
        return np.where(probabilities[:, positive] >= self.threshold, positive, 1 - positive)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, rule: str = "youden") -> "Decision":
        """The decision :meth:`to_json` wrote; ``rule``: where the text names none (cards before rules were
        recorded: Youden's J; a ``decision.json`` written by hand: given)."""
        fields = json.loads(text)
        return cls(positive_class=str(fields["positive_class"]), threshold=float(fields["threshold"]),
                   rule=str(fields.get("rule", rule)))


def decide(probabilities: np.ndarray, labels: Sequence[str], decision: Decision | None = None) -> np.ndarray:
    """The called class per row: the decision's threshold for a binary model that has one, else argmax."""
    if decision is None:
        return probabilities.argmax(axis=1)
    return decision.predict(probabilities, labels)
