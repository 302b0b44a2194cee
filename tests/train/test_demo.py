"""``medclf demo``'s last step: the unseen test folder classified by the runtime alone, and its score's worth."""

from __future__ import annotations

import io

from rich.console import Console

from medclf.runtime import DEFAULT_MODEL
from medclf.train.demo import _score_test


def test_the_test_score_comes_with_its_confidence_interval(blood_cell_images, tmp_path):
    for image in blood_cell_images:  # two real TEST smears of each class
        (tmp_path / image.parent.name).mkdir(exist_ok=True)
        (tmp_path / image.parent.name / image.name).symlink_to(image)
    out = io.StringIO()
    scored = _score_test(DEFAULT_MODEL, tmp_path, Console(file=out, width=300))
    line = next(line for line in out.getvalue().splitlines() if line.startswith("test accuracy"))
    assert scored["images"] == 8 and line.startswith(f"test accuracy {scored['accuracy']:.3f} on 8 images (95% ")
    low, high = (float(x) for x in line.split("confidence interval ")[1].split(" ")[0].split("-"))
    assert low <= scored["accuracy"] <= high
