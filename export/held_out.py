"""The held-out images an export is judged on: verification's, and the float-layer search's apart from them.

Each comes with Keras' probabilities for it (the reference every exported file is compared with) and the calls
the model serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medclf.runtime.modelcard import ModelCard

from .familiarity import FamiliarityUnavailable, probabilities_and_levels
from .labelled_images import load_labelled, spread
from .verify import TOLERANCES, Calls, Comparison, compare, keras_probabilities

MIN_VERIFY_IMAGES = 256  # kept for verification before any go to the search
SEARCH_IMAGES = 256  # held-out images the steps are chosen on, other than verification's where there are enough,
MAX_SEARCH_IMAGES = 1024  # and up to this many where verification has all it takes: expected flips steady with more
MIN_SEARCH_IMAGES = 64


@dataclass(frozen=True)
class HeldOut:
    """Held-out images with their labels (None where unknown), Keras' probabilities for them, and the calls the
    model serves (argmax, or a binary model's threshold), which every comparison with Keras counts; where the
    unfamiliarity output is fitted on them, the pass that gave the probabilities gave its levels' features too
    (``outputs``: :func:`~.familiarity.probabilities_and_levels`)."""

    images: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray
    calls: Calls
    outputs: list[np.ndarray] | None = None

    def compare(self, probabilities: np.ndarray, precision: str) -> Comparison:
        """The exported file's ``probabilities`` for these images against Keras', within ``precision``'s
        tolerance."""
        return compare(self.reference, probabilities, TOLERANCES[precision], self.labels, self.calls)


@dataclass(frozen=True)
class Search:
    """Held-out images to choose a precision's float layers on (``on``) and what they are, in words; Keras'
    probabilities on every held-out image, search's and verification's (their top-two gaps are what
    :func:`expected_flips` compares changes with); how many images verification will judge; and whether the
    search images are verification's own (too few held out for both)."""

    on: HeldOut
    searched_on: str
    held_out_reference: np.ndarray
    verified: int
    verification_images: bool = False


def held_out_sets(model, card: ModelCard, paths: list[str], names: list[str], max_images: int,
                  searching: bool, levels: bool = False) -> tuple[HeldOut, Search | None]:
    """Verification's images (with the familiarity levels' features, from the same Keras pass, when ``levels``
    are asked for and the model has them), and — when FP16 or INT8 will choose float layers (``searching``) —
    the search's own, apart from verification's where enough are held out (:func:`held_out_split`)."""
    calls = Calls(card.labels, card.decision)

    def scored(indices: np.ndarray, levels: bool = False) -> HeldOut:
        images, labels = load_labelled([paths[i] for i in indices], [names[i] for i in indices], card)
        if levels:
            try:
                outputs = probabilities_and_levels(model, images)
                return HeldOut(images, labels, outputs[0], calls, outputs)
            except FamiliarityUnavailable:  # no dense head: the report says so (pipeline._familiarity)
                pass
        return HeldOut(images, labels, keras_probabilities(model, images), calls)

    verified, searched, searched_on = held_out_split(len(paths), max_images, searching)
    verification = scored(verified, levels)
    if searched is None:
        return verification, None
    if searched is verified:  # too few held out for both: the search judges on verification's own images
        return verification, Search(verification, searched_on, verification.reference, len(verified),
                                    verification_images=True)
    searching_on = scored(searched)
    return verification, Search(searching_on, searched_on,
                                np.concatenate([verification.reference, searching_on.reference]), len(verified))


def held_out_split(count: int, most: int, searching: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Which of ``count`` held-out images verification judges (at most ``most``, evenly spread), and which the
    float-layer search chooses on: ``SEARCH_IMAGES`` others (all the rest, up to ``MAX_SEARCH_IMAGES``, once
    verification has ``most``), so the choice is not fitted to its judge, as long as verification keeps
    ``MIN_VERIFY_IMAGES``; with too few left, the verification images themselves (said in the report). No
    search images unless ``searching``."""
    if not searching:
        return spread(count, most), None, ""
    kept = min(most, max(MIN_VERIFY_IMAGES, count - SEARCH_IMAGES))
    if count - kept < MIN_SEARCH_IMAGES:
        verified = spread(count, most)
        return verified, verified, "the verification images (too few others held out)"
    verified = spread(count, kept)
    rest = np.setdiff1d(np.arange(count), verified)
    searched = rest[spread(len(rest), MAX_SEARCH_IMAGES)]
    return verified, searched, f"{len(searched)} held-out images not used for verification"
