"""``medclf``: thin commands that validate, call the library, and turn known failures into one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medclf.train.cli import app
from medclf.train.printed import print_unreadable

runner = CliRunner()


def test_help_lists_the_commands_without_loading_tensorflow():
    code = "import sys\nfrom medclf.train.cli import app\nprint('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "crossval", "evaluate", "ensemble", "calibrate", "explain", "augment", "export", "demo"):
        assert command in result.output


def test_files_left_out_along_the_way_are_counted_again_in_one_line_at_the_end(capsys):
    """Each was named as it was met, maybe thousands of lines above the metrics."""
    print_unreadable({"train": 2, "val": 0, "test": 1})
    print_unreadable({"train": 0, "val": 0})
    print_unreadable({"test": 1})
    assert capsys.readouterr().out.splitlines() == [
        "3 files could not be read and were left out (2 train, 1 test): each is named above",
        "1 file could not be read and was left out (1 test): each is named above"]


def test_class_names_and_paths_are_printed_as_they_are_not_read_as_markup(capsys):
    """Classes "mass [benign]" and "mass [malignant]" were both printed "mass "; "a:b:0.9" became an emoji; a
    folder "x [/y]" ended medclf evaluate in a MarkupError traceback after its metrics were written."""
    from medclf.export.report import export_table
    from medclf.train.bars import stderr_console
    from medclf.train.printed import console, error

    said = "2 classes (mass [benign] 21, mass [malignant] 21, a:b:0.9 3) in x [/y]"
    stderr_console().print(said, highlight=False, soft_wrap=True)
    console.print(said, highlight=False)
    error(said)
    out, err = capsys.readouterr()
    assert out == said + "\n" and err.splitlines() == [said, f"error: {said}"]
    refused = {"file": "x [/y]/model.onnx", "passed": False, "size_bytes": 1e6, "agreement": 0.5,
               "max_abs_diff": 0.1, "accuracy": 0.5, "reference_accuracy": 0.6}
    report = {"verified_on": "8 images", "precisions": {"fp32": refused}}
    console.print(export_table(report))
    assert "refused" in capsys.readouterr().out  # the verdict still drawn, in colour where there is colour


def test_labels_come_from_folders_file_names_or_a_csv_and_a_bad_csv_is_one_line(tmp_path):
    both = runner.invoke(app, ["train", str(tmp_path), "--labels", "l.csv", "--name-labels", "."])
    assert both.exit_code == 2 and "labels come from file names, a CSV or the folders holding the images: one of" \
        in " ".join(both.output.replace("│", " ").split())
    leaves = runner.invoke(app, ["evaluate", __file__, str(tmp_path), "--leaf-folders", "--name-labels", "."])
    assert leaves.exit_code == 2 and "--leaf-folders" in leaves.output
    tops = runner.invoke(app, ["train", str(tmp_path), "--leaf-folders", "--top-folders"])
    assert tops.exit_code == 2 and "--top-folders" in tops.output
    missing = runner.invoke(app, ["evaluate", __file__, str(tmp_path), "--labels", str(tmp_path / "l.csv")])
    assert missing.exit_code == 1 and f"{tmp_path / 'l.csv'}: cannot be read as CSV" in missing.output


def test_bad_image_size_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path), "--image-size", "big"])
    assert result.exit_code == 2 and "--image-size" in result.output


def test_an_out_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    """Not after a 25-minute training run (or an export's verification) has finished."""
    (tmp_path / "taken").write_text("")
    for command in (["train", str(tmp_path)], ["export", __file__], ["explain", __file__, __file__]):
        for out, problem in (("/proc/run", "cannot write there"), (str(tmp_path / "taken"), "is a file")):
            result = runner.invoke(app, [*command, "--out", out])
            said = " ".join(result.output.replace("│", " ").split())  # the error box, unwrapped
            assert result.exit_code == 2 and f"{out}: {problem}" in said, (command, said)


def test_a_folder_that_is_not_a_dataset_gives_one_line_and_exit_1(tmp_path):
    (tmp_path / "only_class").mkdir()
    result = runner.invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "error" in result.output and "at least 2 class folders" in result.output
    assert "Traceback" not in result.output


def test_export_of_a_file_outside_a_run_directory_says_what_is_missing(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"not really")
    result = runner.invoke(app, ["export", str(model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "labels.json" in result.output


def test_an_ensemble_preset_trains_its_members_and_prints_each_then_the_average(chest_xray, tmp_path):
    result = runner.invoke(app, ["train", str(chest_xray / "train"), "--preset", "chest-xray-pair", "--out",
                                 str(tmp_path / "pair"), "--limit-per-class", "16", "--epochs", "1", "--head-epochs",
                                 "1", "--augment-views", "0", "--image-size", "48"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "member 0-two_backbones:\nvalidation:" in result.output and "member 1-mobilenet_v2:" in result.output
    assert "the members averaged:\nvalidation:" in result.output and (tmp_path / "pair" / "model.keras").is_file()


def test_an_unknown_preset_lists_the_known_ones(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path), "--preset", "mnist"])
    assert result.exit_code == 1 and "chest-xray" in result.output


def test_an_unknown_distribution_is_refused_before_any_data_is_read(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path), "--distribute", "horovod"])
    assert result.exit_code == 1 and "--distribute horovod: choose from auto, off" in result.output


def test_evaluating_the_packaged_model_writes_to_the_current_folder_not_into_the_package(tmp_path, monkeypatch,
                                                                                         blood_cell_images):
    import shutil

    from medclf.runtime import DEFAULT_MODEL

    data = tmp_path / "site"
    for image in blood_cell_images:
        (data / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, data / image.parent.name)
    before = sorted(DEFAULT_MODEL.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", str(DEFAULT_MODEL), str(data)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "evaluation-site" / "metrics.json").is_file()
    assert sorted(DEFAULT_MODEL.parent.iterdir()) == before
    assert "evaluation, per class" in result.output and "specificity" in result.output  # four classes: a table
    assert "evaluation, 95% confidence intervals (1000 resamples of its" in result.output
    metrics = json.loads((tmp_path / "evaluation-site" / "metrics.json").read_text())
    eosinophils = metrics["confidence_intervals"]["per_class"]["EOSINOPHIL"]["sensitivity"]
    assert f"({eosinophils[0]:.3f}-{eosinophils[1]:.3f})" in result.output  # beside its sensitivity, in the table
    assert all(name in result.output for name in ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"))
    import hashlib  # the record a site keeps names the very file it scored, and the images

    evaluated = metrics["evaluated"]
    assert evaluated["model_sha256"] == hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert (evaluated["model"], evaluated["data"], evaluated["precision"]) == (str(DEFAULT_MODEL), str(data), "fp32")
    int8 = runner.invoke(app, ["evaluate", str(DEFAULT_MODEL.with_name("model.int8.onnx")), str(data)])
    assert int8.exit_code == 0, int8.output  # its record beside FP32's, not over it
    assert json.loads((tmp_path / "evaluation-site-int8" / "metrics.json").read_text())["evaluated"]["precision"] == \
        "int8" and json.loads((tmp_path / "evaluation-site" / "metrics.json").read_text()) == metrics


def test_evaluate_refuses_a_default_folder_it_cannot_write_before_scoring_anything(tmp_path, blood_cell_images):
    """A model in a read-only folder (a shipped model under /opt) was scored in full, then the run ended in a raw
    "[Errno 13] Permission denied" with no score printed; ``--out`` was checked first, the default was not."""
    from medclf.runtime import DEFAULT_MODEL

    data = tmp_path / "site"
    for image in blood_cell_images:
        (data / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, data / image.parent.name)
    (tmp_path / "shipped").mkdir()
    model = Path(shutil.copy(DEFAULT_MODEL, tmp_path / "shipped" / "model.onnx"))
    (tmp_path / "shipped" / "evaluation-site").write_text("a file where the folder would go")  # root ignores modes
    result = runner.invoke(app, ["evaluate", str(model), str(data)])
    assert result.exit_code == 2, result.output
    assert "evaluation-site: is a file; give a folder; name a folder to write the evaluation to with --out" in \
        " ".join(result.output.split())
    assert "accuracy" not in result.output


def test_evaluating_an_int8_file_also_says_how_often_it_calls_as_the_fp32_file_beside_it(tmp_path, blood_cells):
    """Export verifies INT8 on the training site's images; at a site it can drift (the chest pair's changed 17 of
    the other hospital's 624 calls). Scored on a site's images, it is compared with its FP32 sibling there."""
    import json
    import shutil

    from medclf.runtime import DEFAULT_MODEL, Classifier

    data, paths = tmp_path / "site", []
    for cell in ("EOSINOPHIL", "MONOCYTE"):
        (data / cell).mkdir(parents=True)
        for image in sorted((blood_cells / "TEST" / cell).iterdir())[::40]:
            paths.append(shutil.copy(image, data / cell))
    int8 = DEFAULT_MODEL.with_name("model.int8.onnx")
    result = runner.invoke(app, ["evaluate", str(int8), str(data), "--out", str(tmp_path / "scores")],
                           terminal_width=300)
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    fp32 = scores["agreement_with_fp32"]
    assert scores["evaluated"]["precision"] == "int8"
    calls = [[p.label for p in Classifier(model).classify(sorted(paths))] for model in (DEFAULT_MODEL, int8)]
    changed = sum(a != b for a, b in zip(*calls))
    assert (fp32["images"], fp32["changed"], fp32["tolerance"]) == (len(paths), changed, 0.99)
    truth = [Path(path).parent.name for path in sorted(paths)]
    assert fp32["fp32_accuracy"] == pytest.approx(sum(c == t for c, t in zip(calls[0], truth)) / len(paths))
    assert f"model.int8.onnx makes the same calls as model.onnx on {fp32['agreement']:.1%}" in result.output
    packaged = runner.invoke(app, ["evaluate", str(DEFAULT_MODEL), str(data), "--out", str(tmp_path / "fp32")])
    assert "agreement_with_fp32" not in json.loads((tmp_path / "fp32" / "metrics.json").read_text())
    assert "makes the same calls" not in packaged.output


def test_a_file_that_calls_differently_from_fp32_at_a_site_is_shown_beside_it_and_its_tolerance():
    from medclf.train.printed import agreement_line

    drift = {"file": "x/model.onnx", "images": 624, "changed": 17, "agreement": 607 / 624, "tolerance": 0.99,
             "within_tolerance": False, "moves": {"NORMAL → PNEUMONIA": 17}, "fp32_accuracy": 0.843}
    assert agreement_line(drift, "model.int8.onnx", 0.822) == (
        "evaluation: model.int8.onnx makes the same calls as model.onnx on 97.3% of these images (17 of 624 "
        "changed: NORMAL → PNEUMONIA 17); accuracy 0.822 here, model.onnx's 0.843 — below the 99.0% its export "
        "was verified to on the training site's images")
    assert "below" not in agreement_line(drift | {"within_tolerance": True}, "model.int8.onnx", 0.822)


def test_the_per_class_table_keeps_long_class_names_whole_in_a_log(capsys):
    from medclf.train.printed import print_metrics

    scores = {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 4.0, "specificity": 0.9, "roc_auc": None}
    names = [f"class_with_a_long_descriptive_name_{i}" for i in range(12)]
    print_metrics({"test": {"accuracy": 0.5, "roc_auc_macro": None, "expected_calibration_error": 0.1,
                             "images": 48, "per_class": {name: scores for name in names}}})
    lines = capsys.readouterr().out.splitlines()
    assert all(any(line.startswith(name + " ") for line in lines) for name in names)  # one line each, not folded
    assert "test, per class" in lines[1] and lines[-1].split()[-1] == "—"  # an AUC that cannot be had


def test_every_help_text_is_shown_as_written():
    """typer renders help through rich, whose markup ate '[val/] [test/]', '[rgb]' and 'medclf[gpu]' whole."""
    import typer
    from rich.text import Text

    from medclf.train.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for text in [command.help or "", *(getattr(param, "help", None) or "" for param in command.params)]:
            assert Text.from_markup(text).plain == text.replace("\\[", "["), f"medclf {name}: {text!r}"


def test_evaluate_at_a_stated_prevalence_says_how_often_each_call_is_right_there(chest_xray, tmp_path):
    """A balanced folder of films, read as a site where 10% have pneumonia: the positive predictive value falls
    as Bayes says, and the line says which call is which."""
    import json
    import shutil

    from medclf.runtime import ModelCard, Preprocess
    from medclf.runtime.decision import Decision
    from tests.onnx_graphs import brightness_model

    model = brightness_model(tmp_path / "model.onnx", ModelCard(labels=("NORMAL", "PNEUMONIA"), preprocess=Preprocess(
        8, 8, color="grey"), decision=Decision("PNEUMONIA", 0.5)))
    for name in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "films" / name).mkdir(parents=True)
        for path in sorted((chest_xray / "test" / name).iterdir())[:40]:
            shutil.copy(path, tmp_path / "films" / name)
    result = runner.invoke(app, ["evaluate", model, str(tmp_path / "films"), "--prevalence", "PNEUMONIA=10%",
                                 "--out", str(tmp_path / "out")], terminal_width=250)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    sens, spec, site = metrics["sensitivity"], metrics["specificity"], metrics["at_prevalence"]
    assert site["precision"]["PNEUMONIA"] == pytest.approx(sens * 0.1 / (sens * 0.1 + (1 - spec) * 0.9))
    assert (f"evaluation, at the stated prevalence (NORMAL 90.0%, PNEUMONIA 10.0%): accuracy {site['accuracy']:.3f}, "
            f"a PNEUMONIA call right {site['precision']['PNEUMONIA']:.3f} of the time (PPV), a NORMAL call "
            f"{site['precision']['NORMAL']:.3f} (NPV)") in result.output
    refused = runner.invoke(app, ["evaluate", model, str(tmp_path / "films"), "--prevalence", "COVID=0.2"])
    assert refused.exit_code == 1 and "not a class of this model" in refused.output


def test_a_run_says_first_what_it_trains_and_last_how_its_final_weights_were_mixed():
    from medclf.runtime.preprocess import Preprocess
    from medclf.train.architectures import get_architecture
    from medclf.train.fit import FitConfig
    from medclf.train.printed import final_weights_line, training_plan

    default = training_plan(get_architecture("mobilenet_v2"), Preprocess(224, 224), FitConfig(), pretrained=True)
    assert default == ("training MobileNetV2 from ImageNet weights at 224x224 px: a new head on its frozen features "
                       "for 10 epochs, then the layers after block_12_add fine-tuned for up to 30 more; time budget "
                       "28 min")
    frozen = training_plan(get_architecture("two_backbones"), Preprocess(352, 352), FitConfig(epochs=12, head_epochs=1,
                                                                                              time_budget=None), True)
    assert frozen == ("training MobileNetV2 and MobileNet 0.25 side by side from ImageNet weights at 352x352 px: a "
                      "new head on their frozen features for up to 13 epochs")
    scratch = training_plan(get_architecture("small_cnn"), Preprocess(128, 128), FitConfig(epochs=1), pretrained=True)
    assert scratch.startswith("training a small CNN (four conv-BN-pool blocks) from random weights at 128x128 px: "
                              "up to 1 epoch;")

    chosen = {"mix": 0.5, "validation_auc": {"0.5": 0.9976, "0.75": 0.9977, "1.0": 0.9985}}
    assert final_weights_line(chosen) == ("final weights: 0.5 fine-tuned + 0.5 head-only (WiSE), the most robust mix "
                                          "validation accepts (ROC AUC at 0.5, 0.75, 1.0 fine-tuned: 0.998, 0.998, "
                                          "0.999)")
    assert final_weights_line({"mix": 1.0, "validation_auc": {}}) == "final weights: fine-tuned as asked"
    undefined = {"mix": 0.5, "validation_auc": {"0.5": None, "0.75": None, "1.0": None}}  # a class missing
    assert final_weights_line(undefined).endswith("(ROC AUC at 0.5, 0.75, 1.0 fine-tuned: —, —, —)")


def test_version_says_which_medclf_without_loading_tensorflow():
    code = "import sys\nfrom medclf.train.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n" \
           "print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout == "medclf 0.1.0\nFalse\n", done.stderr


def test_warnings_stay_plain_lines_after_a_library_configures_the_root_logger():
    """A dependency's module-level logging.warning() sets up the root logger midway through a run; medclf's own
    warnings keep their plain form (the demo printed 'WARNING:medclf.train.copies:...' once it had)."""
    code = ("import logging, sys\nfrom medclf.train import cli\ncli._plain_warnings()\nlogging.warning('library')\n"
            "logging.getLogger('medclf.train.copies').warning('2468 of 2487 images are copies')\n"
            "logging.getLogger('medclf.train.copies').info('not said')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stderr.splitlines() == ["WARNING:root:library", "2468 of 2487 images are copies"]


def test_evaluations_of_two_sites_test_folders_stand_side_by_side_and_a_run_directory_is_refused(
        blood_cell_images, tmp_path, monkeypatch):
    """siteA/test then siteB/test both went to evaluation-test, the second over the first without a word; --out
    RUN_DIR replaced the run's own metrics.json (its training record, its threshold's provenance)."""
    from medclf.runtime import DEFAULT_MODEL

    sites = {}
    for site in ("siteA", "siteB"):
        sites[site] = tmp_path / site / "test"
        for image in blood_cell_images:
            (sites[site] / image.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(image, sites[site] / image.parent.name)
    monkeypatch.chdir(tmp_path)
    for site in ("siteA", "siteB", "siteA"):  # again: into its own folder
        done = runner.invoke(app, ["evaluate", str(DEFAULT_MODEL), str(sites[site])])
        assert done.exit_code == 0, done.output
    scored = {folder.name: json.loads((folder / "metrics.json").read_text())["evaluated"]["data"]
              for folder in tmp_path.glob("evaluation-*")}
    assert scored == {"evaluation-test": str(sites["siteA"]), "evaluation-test-2": str(sites["siteB"])}
    deployed = tmp_path / "deployed" / "model.onnx"  # a deployment's file, evaluated, then replaced by another
    deployed.parent.mkdir()
    for model in (DEFAULT_MODEL, DEFAULT_MODEL.with_name("model.int8.onnx"), DEFAULT_MODEL):
        shutil.copy(model, deployed)
        assert runner.invoke(app, ["evaluate", str(deployed), str(sites["siteA"])]).exit_code == 0
    records = {folder.name: json.loads((folder / "metrics.json").read_text())["evaluated"]["model_sha256"]
               for folder in deployed.parent.glob("evaluation-*")}
    assert sorted(records) == ["evaluation-test", "evaluation-test-2"] and len(set(records.values())) == 2
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"a run's model")
    refused = runner.invoke(app, ["evaluate", str(DEFAULT_MODEL), str(sites["siteA"]), "--out", str(run)])
    assert refused.exit_code == 1 and "a run directory (it holds model.keras)" in refused.output
    assert not (run / "metrics.json").exists()


def test_commands_refuse_before_any_work_what_they_would_get_wrong_at_the_end(blood_cells, tmp_path):
    """calibrate --out site.json wrote the record over the calibrated model (and --out x.png the model where the
    picture goes); demo on data without TEST/ failed after training and exporting; a multi-class train with
    --target-sensitivity recorded it and chose no threshold."""
    from medclf.runtime import DEFAULT_MODEL

    for name in ("site.json", "x.png"):
        done = runner.invoke(app, ["calibrate", str(DEFAULT_MODEL), str(tmp_path), "--out", str(tmp_path / name)])
        words = " ".join(done.output.replace("│", " ").split())  # the usage error's box, unwrapped
        assert done.exit_code == 2 and "give the calibrated copy a .onnx name" in words, done.output
    (tmp_path / "bc" / "TRAIN").mkdir(parents=True)
    demo = runner.invoke(app, ["demo", "--data", str(tmp_path / "bc"), "--out", str(tmp_path / "demo")])
    assert demo.exit_code == 2 and "TEST not found" in demo.output and not (tmp_path / "demo").exists()
    multi = runner.invoke(app, ["train", str(blood_cells / "TRAIN"), "--out", str(tmp_path / "run"),
                                "--target-sensitivity", "0.9", "--limit-per-class", "4"])
    assert multi.exit_code == 1 and "sets a binary task's threshold; these images are of 4 classes" in multi.output
    assert not (tmp_path / "run" / "model.keras").exists()


def test_images_unlike_a_calibrated_copys_site_are_said_unlike_that_site_not_the_training_images():
    """A copy whose unfamiliarity was set at a site (--familiarity-from-site) measures against that site's images;
    evaluate said "unlike its training images", as medclf-run does not."""
    from medclf.train.printed import unlike_line

    unlike = {"count": 3, "images": 316, "share": 3 / 316, "examples": []}
    assert "are unlike its training images" in unlike_line(unlike, "model.onnx")
    assert "are unlike the images of site_fit (of images like them" in unlike_line(unlike | {"reference": "site_fit"},
                                                                                   "model.site.onnx")


def test_a_site_calibration_no_better_than_the_model_as_it_stands_is_warned_of():
    from medclf.train.cli import _better

    def estimate(ece: float, before: float) -> dict:
        return {"expected_calibration_error": {"mean": ece}, "expected_calibration_error_before": {"mean": before},
                "log_loss": {"mean": ece * 10}, "log_loss_before": {"mean": before * 10}}

    assert _better(estimate(0.055, 0.078)) and not _better(estimate(0.077, 0.065))
