"""How unlike a model's training images a site's images are, and a copy of the model whose unfamiliarity takes the
site's images as the reference (``medclf calibrate --familiarity-from-site``).

An exported file's ``unfamiliarity`` is the largest of several ratios, one per depth of the network: each
depth's distance from the training images over its 99.5th percentile on held-out images, the largest over its
own (``medclf.export.familiarity``). A site whose images look otherwise (another scanner, stain or exposure)
can be beyond 1 on most of them. Rescaling the output alone to bring them back under 1 also brings back what
the model must still refuse: on the packaged blood model with a site's smears 30% brighter (79% of 498 beyond
1), one factor (0.24) let 75% of chest films through. The shallow depths, which see the brightness, are the
ones to relax; the deep ones, which see that a film is not a cell, hardly move. So each depth is set again at
the site, then the largest: chest films stay 100% flagged, cataract photos 98%, the site's other smears 1.2%
(0.5% by construction on the images set on), plain smears 0.4%. Smears 40% darker (all 498 beyond 1): 0.4%
after, chest films and cataract photos 100%. The graph is changed where the ratios meet — a ``Mul`` by one
weight per depth before the ``ReduceMax`` that gives the output (:mod:`medclf.export.depth_weights`, which export
uses too, to set an FP16 or INT8 file's own) — so it works on a file of any precision, and on one set at a site
before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from medclf.export.depth_weights import depth_weights
from medclf.runtime.modelcard import (FAMILIARITY_MIN_IMAGES, FAMILIARITY_QUANTILE, ModelCard, familiarity_site,
                                     unlike)

SITE_PREFIX = "medclf_site"  # names the nodes a site's weights add


@dataclass(frozen=True)
class SiteFamiliarity:
    """How many of the site's images lie beyond 1, and — if the site takes its images as the reference — the
    weight the copy gives each depth's ratio (the depth's and the largest's 99.5th percentiles at the site)."""

    images: int
    beyond: int  # site images beyond 1, as the model stands
    quantile: float  # where the threshold is set: 0.995, 1 image in 200 beyond
    weights: tuple[float, ...] | None = None  # None: the copy keeps the training site's
    reference: str | None = None  # the site whose images the calibrated file's unfamiliarity was set on, if any

    def record(self) -> dict:
        return {"images": self.images, "beyond": self.beyond, "share": self.beyond / self.images,
                "quantile": self.quantile, "weights": None if self.weights is None else list(self.weights)}


def site_familiarity(levels: np.ndarray, card: ModelCard, from_site: bool,
                     data: str | os.PathLike[str]) -> SiteFamiliarity:
    """``levels``: each site image's per-depth ratios ``[N, depths]`` as the file computes them (its
    unfamiliarity is their largest). With ``from_site``, the weights that put each depth, then the largest,
    at its 99.5th percentile over these images."""
    quantile = card.metrics.get("familiarity", {}).get("quantile", FAMILIARITY_QUANTILE)
    beyond = int(np.sum(unlike(levels.max(axis=1))))  # a NaN level measured nothing familiar
    if not from_site:
        return SiteFamiliarity(len(levels), beyond, quantile, reference=familiarity_site(card))
    measured = levels[np.isfinite(levels).all(axis=1)]  # NaN (an old FP16 file's overflow) is no reference
    if len(measured) < FAMILIARITY_MIN_IMAGES:
        finite = " with finite levels" if len(measured) < len(levels) else ""
        raise ValueError(f"{data}: {len(measured)} images{finite}; taking a site's images as what the model is "
                         f"familiar with needs at least {FAMILIARITY_MIN_IMAGES}")
    return SiteFamiliarity(len(levels), beyond, quantile, depth_weights(measured, quantile), familiarity_site(card))


def site_description(site: str) -> str:
    """What a site copy's unfamiliarity now measures, for its card."""
    return (f"how unlike the images of {site} each image is [batch, 1], set again there (medclf calibrate "
            "--familiarity-from-site): above 1, farther from them (Mahalanobis distance at several depths of the "
            "network) than 99.5% of those images")
