"""How many leading convolutions an FP16 or INT8 file keeps float: the step verification should pass."""

from __future__ import annotations

import math

import pytest

from medclf.export.float_search import PASS_CONFIDENCE, chosen_try, cleared, pass_probability


def test_a_step_clears_when_verification_should_pass_it_nine_times_in_ten():
    """INT8 on 1,024 images may count 10 changed answers: a file expected to change 0.69% passes 90% of the
    time, 0.94% only 63%. FP16 may count 1: 0.05% passes 91%, 0.1% 73%. On 489 images FP16 may count none."""
    assert pass_probability("int8", 0.0069, 1024) == pytest.approx(0.897, abs=0.001)
    assert pass_probability("int8", 0.0094, 1024) == pytest.approx(0.63, abs=0.01)
    assert pass_probability("fp16", 0.0005, 1024) == pytest.approx(0.906, abs=0.001)
    assert pass_probability("fp16", 0.001, 1024) == pytest.approx(0.727, abs=0.001)
    assert pass_probability("fp16", 0.00026, 489) == pytest.approx(math.exp(-0.00026 * 489), abs=0.001)
    assert pass_probability("int8", 0.0, 1024) == 1.0


def test_searched_on_verification_images_a_step_clears_when_it_passes_there_whatever_the_estimate():
    """Too few images held out for a search of its own: the count on verification's images is its verdict."""
    assert cleared(passed=True, chance=0.6, on_verification_images=True)
    assert not cleared(passed=False, chance=0.99, on_verification_images=True)
    assert cleared(passed=False, chance=PASS_CONFIDENCE, on_verification_images=False)
    assert not cleared(passed=True, chance=0.6, on_verification_images=False)


def test_when_no_step_clears_the_pick_is_the_most_agreeing_where_counted_else_the_fewest_expected_flips():
    """Searched on verification's own images, the count is the verdict, so the step that counted most agreement
    there is the one verification would refuse least; elsewhere a few hundred images' count is noise (see
    ``_search``) and the estimate decides."""
    tries = [{"float_convs": n, "agreement": a, "expected_flips": f, "cleared": False}
             for n, a, f in ((9, 0.989, 0.0174), (12, 0.977, 0.0171), (15, 0.982, 0.0169))]
    assert chosen_try(tries, on_verification_images=True)["float_convs"] == 9
    assert chosen_try(tries, on_verification_images=False)["float_convs"] == 15
    tries[-1]["cleared"] = True
    assert chosen_try(tries, on_verification_images=True)["float_convs"] == 15
    tied = [{**tries[0], "expected_flips": 0.02}, {**tries[0], "float_convs": 12}]
    assert chosen_try(tied, on_verification_images=True)["float_convs"] == 12
