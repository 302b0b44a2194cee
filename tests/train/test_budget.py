"""The wall-clock budget: defaults finish in bounded time on any dataset, and say what they cut."""

from __future__ import annotations

import csv
import logging
import math
import time

from medclf.train.budget import TimeBudget
from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train
from tests.conftest import needs_weights


def test_without_a_budget_everything_is_affordable():
    budget = TimeBudget(None)
    assert budget.left() == math.inf and budget.affordable(3, seconds_each=1e9, share=0.5) == 3


def test_a_share_of_the_time_left_buys_whole_steps():
    budget = TimeBudget(1.0)  # 60 s
    assert budget.affordable(10, seconds_each=10.0, share=0.5) == 2  # 30 s of the ~60 s left
    assert budget.affordable(1, seconds_each=10.0, share=0.5) == 1
    assert TimeBudget(1.0, started=time.monotonic() - 120).affordable(5, seconds_each=1.0, share=0.5) == 0


def test_time_reserved_for_scoring_is_not_spent_on_fitting():
    budget = TimeBudget(1.0)
    budget.reserve(40.0)
    assert 19.0 < budget.left() <= 20.0
    assert budget.affordable(10, seconds_each=5.0, share=1.0) == 3  # 20 s left, not 60


@needs_weights
def test_a_spent_budget_cuts_views_and_ends_each_stage_after_one_batch_and_says_so(cataract, tmp_path, caplog):
    config = FitConfig(epochs=4, head_epochs=4, patience=10, augment_views=2, time_budget=0.001)
    with caplog.at_level(logging.WARNING, logger="medclf.train.budget"):
        result = train(cataract, tmp_path, Recipe(arch="mobilenet_025", image_size=64, val_split=0.3, fit=config))
    with open(tmp_path / "history.csv", newline="") as handle:
        assert [row["stage"] for row in csv.DictReader(handle)] == ["head", "fine-tune"]
    cuts = result.metrics["training"]["time_budget_cuts"]
    assert cuts == ["0 of 2 augmented views of the training images cached",
                    cuts[1], cuts[2]] and "head stopped in epoch 1 after batch 1 of 2: no time left" in cuts[1]
    assert "fine-tune stopped in epoch 2 after batch 1" in cuts[2]  # numbered on from the head stage
    assert sum("time budget (0.001 min" in record.getMessage() for record in caplog.records) == 3
    assert (tmp_path / "model.keras").exists()  # a cut run is still a whole run
    scoring = result.metrics["training"]["scoring_seconds"]
    assert scoring["reserved"] >= scoring["used"] > 0  # scoring the validation images was foreseen
