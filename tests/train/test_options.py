"""The command line's options: what was typed becomes a recipe, a source of labels, a size — or one usage error."""

from __future__ import annotations

import pytest

from medclf.train.labellers import FolderLabels, NameLabels, TopFolders
import typer

from medclf.train.options import parse_naming, parse_profile, parse_size, recipe_of, recipes_of
from medclf.train.pipeline import Recipe
from medclf.train.presets import ENSEMBLES, PRESETS


def test_image_size_takes_n_or_height_x_width():
    assert parse_size("160") == 160
    assert parse_size("240x320") == (240, 320)


def test_a_batch_profile_is_three_sizes_never_one_read_as_min():
    assert (parse_profile("1,16,64").min, parse_profile("1,16,64").opt, parse_profile("1,16,64").max) == (1, 16, 64)
    for text in ("64", "1,64", "1,2,3,4"):  # '64' was min=64 with the defaults' 16 and 64: "got 64/16/64"
        with pytest.raises(typer.BadParameter, match="three batch sizes"):
            parse_profile(text)


def test_name_labels_take_a_separator_and_an_optional_position():
    assert parse_naming(".") == NameLabels(".", 0)
    assert parse_naming("_:1") == NameLabels("_", 1)
    assert parse_naming("::-1") == NameLabels(":", -1)
    assert parse_naming(None) is None
    assert parse_naming(None, leaf_folders=True) == FolderLabels()
    assert parse_naming(None, top_folders=True) == TopFolders()


def test_flags_given_next_to_a_preset_override_only_what_they_name():
    recipe = recipe_of("blood-cells", {"epochs": 3, "image_size": "96x128", "grey": None, "clahe": True})
    preset = PRESETS["blood-cells"]
    assert recipe.fit.epochs == 3 and recipe.fit.batch_size == preset.fit.batch_size
    assert recipe.image_size == (96, 128) and recipe.clahe and recipe.crop == "stain"
    assert recipe_of(None, {}) == Recipe()
    assert recipe_of(None, {"grey": True}).color == "grey"
    assert preset.freeze_until == "block_9_add"  # MobileNetV2's: another architecture fine-tunes from its own
    assert recipe_of("blood-cells", {"arch": "mobilenet_025"}).freeze_until is None
    given = recipe_of("blood-cells", {"arch": "mobilenet_025", "freeze_until": "conv_pw_11"})
    assert given.freeze_until == "conv_pw_11"


def test_flags_next_to_an_ensemble_preset_override_each_members():
    members = recipes_of("chest-xray-pair", {"epochs": 3, "seed": 7})
    assert [m.arch for m in members] == [m.arch for m in ENSEMBLES["chest-xray-pair"]]
    assert all(m.fit.epochs == 3 and m.fit.seed == 7 for m in members)
    assert recipes_of("blood-cells", {}) == [recipes_of("blood-cells", {})[0]] and len(recipes_of(None, {})) == 1


def test_time_budget_is_given_in_minutes_and_zero_lifts_it():
    assert recipe_of(None, {"time_budget": 5.0}).fit.time_budget == 5.0
    assert recipe_of(None, {"time_budget": 0}).fit.time_budget is None


def test_distribution_is_a_fitting_choice():
    assert recipe_of(None, {"distribute": "off"}).fit.distribute == "off"


@pytest.mark.parametrize("option, value", [("distribute", "gpus"), ("schedule", "cosine"), ("augmentation", "heavy")])
def test_an_unknown_choice_is_refused_before_the_data_is_read(option, value):
    """--schedule cosine was refused only after decoding and caching the features, minutes in."""
    with pytest.raises(ValueError, match=f"--{option} {value}: choose from"):
        recipe_of(None, {option: value})


@pytest.mark.parametrize("arch, size", [("mobilenet_v2", "32"), ("mobilenet_025", "28"), ("two_backbones", "40x64")])
def test_an_imagenet_backbone_below_the_size_it_learns_at_is_refused_before_the_data_is_read(arch, size):
    """MobileNetV2 at 32 px: its pooled features 0.2% non-zero, a model giving every film 0.5003, export
    "verified"; MobileNet 0.25 at 28 px failed in Keras ("Computed output size would be zero or negative")."""
    with pytest.raises(ValueError, match=f"--image-size {size}: {arch} needs 48 px a side or more"):
        recipe_of(None, {"arch": arch, "image_size": size})
    assert recipe_of(None, {"arch": "small_cnn", "image_size": "28"}).image_size == 28  # learns at 28 px
    assert recipe_of(None, {"arch": arch, "image_size": "48"}).image_size == 48


def test_grey_images_with_stain_colour_jitter_are_refused_before_the_data_is_read():
    """It failed in RandomSaturation after decoding (and, for transfer models, the whole frozen-feature pass)."""
    with pytest.raises(ValueError, match="microscopy jitters stain colours"):
        recipe_of(None, {"grey": True, "augmentation": "microscopy"})


@pytest.mark.parametrize("arch, how", [("small_cnn", "trains from scratch"),
                                       ("two_backbones", "keeps its whole backbone frozen")])
def test_a_wise_mix_is_refused_for_a_model_without_a_fine_tuned_backbone(arch, how):
    """There is no linear probe to mix with: --wise 0.5 was taken and silently ignored."""
    with pytest.raises(ValueError, match=f"--wise mixes fine-tuned and linear-probe weights.*{arch} {how}"):
        recipe_of(None, {"arch": arch, "wise": 0.5})
    assert recipe_of(None, {"arch": "mobilenet_v2", "wise": 0.5}).fit.wise == 0.5


def test_a_group_pattern_python_cannot_read_is_a_usage_error_not_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from medclf.train.cli import app

    for command in (["train", str(tmp_path)], ["crossval", str(tmp_path)], ["evaluate", __file__, str(tmp_path)]):
        done = CliRunner().invoke(app, [*command, "--group-pattern", "("], terminal_width=200)
        words = " ".join(done.output.replace("│", " ").split())  # the usage error's box, unwrapped
        assert done.exit_code == 2 and "'(' is not a regular expression: missing )" in words, done.output
