"""A folder's name stands for the one class it names, in any case or by the start of a long name; never a guess."""

from __future__ import annotations

from medclf.runtime.class_names import matching_class

CT = ("adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib", "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa", "normal")


def test_a_name_stands_for_itself_then_for_the_one_class_it_matches_in_any_case():
    assert matching_class("NORMAL", ("NORMAL", "normal")) == "NORMAL"
    assert matching_class("normal", ("NORMAL", "PNEUMONIA")) == "NORMAL"
    assert matching_class("Normal", ("NORMAL", "normal")) is None  # two answers: not guessed


def test_a_name_stands_for_the_one_class_it_is_the_start_of_up_to_a_separator():
    """The Kaggle chest CT set: test/ folders are the start of train/'s."""
    assert matching_class("adenocarcinoma", CT) == CT[0]
    assert matching_class("large.cell.carcinoma", CT) == CT[1]
    assert matching_class("normal_2", CT) == "normal"  # or the class is the name's start
    assert matching_class("adeno", CT) is None  # a start is a whole word, not a few letters
    assert matching_class("carcinoma", ("carcinoma_a", "carcinoma_b")) is None


def test_a_class_whose_name_holds_a_slash_is_found_whole_on_a_runs_record():
    """RSNA's classes include "No Lung Opacity / Not Normal": export matched its pieces as folders, found none,
    measured no accuracy and refused INT8 ("the verification images have no labels")."""
    from medclf.runtime.class_names import class_on_path

    rsna = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")
    assert class_on_path("No Lung Opacity / Not Normal", rsna) == rsna[1]
    assert class_on_path("fold_0/Normal", rsna) == "Normal"
