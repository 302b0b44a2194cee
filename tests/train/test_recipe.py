"""Recipes: what decides a model besides its data, and the measured presets for the seed datasets."""

from __future__ import annotations

import re

import cv2
import pytest

from medclf.train.data import shorter_side
from medclf.train.pipeline import Recipe, _sized
from medclf.train.presets import ENSEMBLES, PRESETS, get_members, get_preset


def test_the_default_recipe_fine_tunes_mobilenet_v2_above_its_own_cut_at_160_px():
    recipe = Recipe()
    assert recipe.architecture().frozen_until == "block_12_add"
    assert recipe.preprocess().shape == (160, 160, 3)


def test_without_a_size_images_with_imagenets_detail_are_seen_at_224_px_and_smaller_ones_at_160(blood_cells,
                                                                                             tmp_path):
    smears = tuple(str(p) for p in sorted((blood_cells / "TEST" / "MONOCYTE").iterdir())[:20])  # 320x240
    assert shorter_side(smears) == 240 and _sized(Recipe(), smears).preprocess().shape == (224, 224, 3)
    small = []
    for i, path in enumerate(smears[:5]):  # the same smears at 64x48, as MedMNIST-sized datasets ship them
        small.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(small[-1], cv2.resize(cv2.imread(path), (64, 48), interpolation=cv2.INTER_AREA))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert shorter_side((*small, str(tmp_path / "broken.png"))) == 48
    assert _sized(Recipe(), tuple(small)).preprocess().shape == (160, 160, 3)
    assert _sized(Recipe(image_size=96), smears).image_size == 96  # a size given is kept
    assert _sized(Recipe(arch="small_cnn"), smears).image_size == 128  # from scratch: no ImageNet scale to match
    assert _sized(Recipe(), (str(tmp_path / "broken.png"),)).image_size == 160


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


@pytest.mark.parametrize("name", sorted(ENSEMBLES))
def test_an_ensemble_presets_members_hold_out_the_same_validation_images(name):
    """Where the ensemble's threshold is chosen: one seed, one split fraction, one patient pattern."""
    members = get_members(name)
    assert len(members) > 1 and get_members("chest-xray") == (get_preset("chest-xray"),)
    assert len({(m.fit.seed, m.val_split, m.group_pattern, m.group_copies) for m in members}) == 1
    for member in members:
        member.architecture(), member.preprocess()
    with pytest.raises(ValueError, match="medclf train only"):
        get_preset(name)
