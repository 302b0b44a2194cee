"""Recipes: what decides a model besides its data, and the measured presets for the seed datasets."""

from __future__ import annotations

import re

import pytest

from medclf.train.pipeline import Recipe
from medclf.train.presets import PRESETS, get_preset


def test_the_default_recipe_fine_tunes_mobilenet_v2_above_its_own_cut_at_160_px():
    recipe = Recipe()
    assert recipe.architecture().frozen_until == "block_12_add"
    assert recipe.preprocess().shape == (160, 160, 3)


def test_freeze_until_moves_the_cut_of_a_transfer_model_only():
    assert Recipe(freeze_until="block_9_add").architecture().frozen_until == "block_9_add"
    with pytest.raises(ValueError, match="from scratch"):
        Recipe(arch="small_cnn", freeze_until="conv2").architecture()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_recipe(name):
    recipe = get_preset(name)
    recipe.architecture(), recipe.preprocess()
    if recipe.group_pattern:
        re.compile(recipe.group_pattern)


def test_the_chest_xray_preset_groups_images_by_patient():
    pattern = re.compile(get_preset("chest-xray").group_pattern)
    for name, patient in [("person1000_bacteria_2931.jpeg", "person1000"), ("IM-0115-0001.jpeg", "IM-0115"),
                          ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427")]:
        assert pattern.search(name).group(1) == patient
