"""``medclf augment``: augmented copies on disk, mirroring the class folders, past unreadable files and masks."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from medclf.train.cli import app
from medclf.train.fit import AUGMENTATIONS, make_augmenter
from medclf.train.labels_csv import LabelsError


def two_photos_a_class(cataract: Path, data: Path) -> Path:
    """``data/{cataract,normal}/`` holding links to two of each class's photos."""
    for name in ("cataract", "normal"):
        (data / name).mkdir(parents=True)
        for photo in sorted((cataract / name).iterdir())[:2]:
            (data / name / photo.name).symlink_to(photo)
    return data


def test_augment_writes_copies_per_image_beside_their_class_and_reports_bad_files(cataract, tmp_path, caplog):
    data = two_photos_a_class(cataract, tmp_path / "data")
    (data / "normal" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    first = sorted((cataract / "cataract").iterdir())[0]
    cv2.imwrite(str(data / "cataract" / f"{first.stem}_mask.png"), np.zeros((8, 8), np.uint8))  # an outline: no copies
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, ["augment", str(data), "--out", str(tmp_path / "out"), "--copies", "3"])
    assert result.exit_code == 1 and "broken.jpg" in result.output and "wrote 12 images" in result.output
    assert f"1 segmentation mask not augmented (e.g. cataract/{first.stem}_mask.png)" in caplog.text
    copies = sorted((tmp_path / "out" / "cataract").glob(f"{first.stem}.aug*"))
    assert len(copies) == 3
    original = cv2.imread(str(first))
    views = [cv2.imread(str(copy)) for copy in copies]
    assert all(view.shape == original.shape for view in views)
    assert all(not np.array_equal(view, original) for view in views)
    assert not np.array_equal(views[0], views[1])


def test_augmenting_into_the_data_again_leaves_the_copies_it_wrote_alone(cataract, tmp_path, caplog):
    """--out DATA run twice wrote copies of copies (x.aug0.aug0.jpg), more each time."""
    data = two_photos_a_class(cataract, tmp_path / "data")
    for _ in range(2):
        result = CliRunner().invoke(app, ["augment", str(data), "--out", str(data), "--copies", "1"])
        assert result.exit_code == 0 and "wrote 4 images" in result.output, result.output
    assert len(list(data.rglob("*.aug0.*"))) == 4 and not list(data.rglob("*.aug0.aug0.*"))
    assert "4 images are copies medclf augment wrote (name.augN): not augmented again" in caplog.text


def test_augmenting_into_an_earlier_out_leaves_only_this_runs_copies(cataract, tmp_path, caplog):
    """A second run with fewer copies kept the first's extra ones, and an image removed from the data (as
    mislabelled) kept its copies in OUT, trained on from there."""
    data = two_photos_a_class(cataract, tmp_path / "data")
    out = tmp_path / "out"
    assert CliRunner().invoke(app, ["augment", str(data), "--out", str(out), "--copies", "3"]).exit_code == 0
    removed = sorted((data / "normal").iterdir())[0]
    removed.unlink()
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, ["augment", str(data), "--out", str(out), "--copies", "2"])
    assert result.exit_code == 0 and "wrote 6 images" in result.output, result.output
    assert sorted(path.name for path in out.rglob("*.aug*")) == sorted(
        f"{photo.stem}.aug{k}{photo.suffix}" for photo in data.rglob("*.*") for k in range(2))
    assert "removed 6 copies an earlier medclf augment of" in caplog.text
    other = two_photos_a_class(cataract, tmp_path / "other")  # another dataset's copies pooled in the same OUT
    for photo in other.rglob("*.*"):
        photo.rename(photo.with_name(f"b_{photo.name}"))
    assert CliRunner().invoke(app, ["augment", str(other), "--out", str(out), "--copies", "1"]).exit_code == 0
    assert len(list(out.rglob("*.aug*"))) == 6 + 4  # the first dataset's copies stay


def test_a_policy_it_does_not_know_is_one_line_before_any_copy(cataract, tmp_path):
    result = CliRunner().invoke(app, ["augment", str(cataract), "--out", str(tmp_path / "out"),
                                      "--augmentation", "bogus"])
    assert result.exit_code == 1 and "unknown augmentation 'bogus'" in result.output
    assert "Traceback" not in result.output and not list((tmp_path / "out").rglob("*.*"))


def test_a_split_dataset_has_only_its_training_images_augmented(cataract, tmp_path, caplog):
    """Augmented test images would judge a model on altered copies of a few sources."""
    from medclf.train.augment import augment_folder

    photo = sorted((cataract / "cataract").iterdir())[0]
    for split in ("train", "test"):
        (tmp_path / "data" / split / "cataract").mkdir(parents=True)
        (tmp_path / "data" / split / "cataract" / f"{split}.jpg").symlink_to(photo)
    with caplog.at_level(logging.WARNING):
        done = list(augment_folder(tmp_path / "data", tmp_path / "out", copies=2))
    assert [Path(item.source).parent.parent.name for item in done] == ["train"]
    assert sorted(path.relative_to(tmp_path / "out").as_posix() for path in (tmp_path / "out").rglob("*.jpg")) == [
        "train/cataract/train.aug0.jpg", "train/cataract/train.aug1.jpg"]
    assert f"only train/ is augmented (into {tmp_path / 'out' / 'train'}); test/ left out" in caplog.text
    (tmp_path / "data").rename(tmp_path / "chest_xray")  # as chest_xray.zip unpacks: chest_xray/chest_xray/...
    (tmp_path / "data").mkdir()
    (tmp_path / "chest_xray").rename(tmp_path / "data" / "chest_xray")
    done = list(augment_folder(tmp_path / "data", tmp_path / "wrapped", copies=1))
    assert [Path(item.source).parent.parent.name for item in done] == ["train"]


def test_validation_and_test_images_are_left_out_however_the_dataset_splits_them(cataract, tmp_path, caplog):
    """Class folders beside test/ (trained with --test DATA/test), and MedMNIST's save (one folder, a sheet of
    TRAIN/VALIDATION/TEST rows): their validation and test images were augmented too."""
    from medclf.train.augment import augment_folder

    photo = sorted((cataract / "cataract").iterdir())[0]
    for folder in ("beside/cataract", "beside/test/cataract", "beside/val/cataract", "save/bloodmnist"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("beside/cataract/a.jpg", "beside/test/cataract/t.jpg", "beside/val/cataract/v.jpg",
                 "save/bloodmnist/train0_0.jpg", "save/bloodmnist/val0_0.jpg", "save/bloodmnist/test0_0.jpg"):
        (tmp_path / name).symlink_to(photo)
    (tmp_path / "save" / "bloodmnist.csv").write_text(
        "TRAIN,train0_0.jpg,0\nVALIDATION,val0_0.jpg,0\nTEST,test0_0.jpg,0\n")
    with caplog.at_level(logging.WARNING):
        beside = [Path(item.source).name for item in augment_folder(tmp_path / "beside", tmp_path / "o1", 1)]
        save = [Path(item.source).name for item in augment_folder(tmp_path / "save" / "bloodmnist", tmp_path / "o2", 1)]
    assert beside == ["a.jpg"] and save == ["train0_0.jpg"]
    assert "the class folders are augmented; test/, val/ left out" in caplog.text
    assert "bloodmnist.csv: its 2 validation and test rows are left out" in caplog.text
    (tmp_path / "save" / "bloodmnist.csv").write_text("file,width,height\ntrain0_0.jpg,28,28\n")  # no labels
    assert len(list(augment_folder(tmp_path / "save" / "bloodmnist", tmp_path / "o3", 1))) == 3
    (tmp_path / "save" / "bloodmnist.csv").write_text(  # splits it cannot follow: refused, not all augmented
        "split,file,label\nTRAIN,train0_0.jpg,0\nTEST,test0_0.jpg,0\nholdout2,val0_0.jpg,0\n")
    with pytest.raises(LabelsError, match="names splits, but also 'holdout2'"):
        list(augment_folder(tmp_path / "save" / "bloodmnist", tmp_path / "o4", 1))


def test_files_of_one_stem_get_copies_of_their_own(cataract, tmp_path):
    """scan.webp and scan.png both made scan.aug0.png (the second overwrote the first); so did scan.JPG and scan.jpg."""
    photo = cv2.imread(str(sorted((cataract / "normal").iterdir())[0]))
    data = tmp_path / "data" / "normal"
    data.mkdir(parents=True)
    for name in ("scan.png", "scan.webp", "scan.jpg", "scan.JPG"):
        cv2.imwrite(str(data / name), photo)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["augment", str(tmp_path / "data"), "--out", str(out), "--copies", "1"])
    assert result.exit_code == 0 and "wrote 4 images" in result.output
    assert sorted(p.name for p in (out / "normal").iterdir()) == [
        "scan.aug0.JPG", "scan.aug0.jpg", "scan.aug0.png", "scan.webp.aug0.png"]


def test_a_name_near_the_255_byte_limit_gets_its_copies(cataract, tmp_path):
    photo = cv2.imread(str(sorted((cataract / "normal").iterdir())[0]))
    data = tmp_path / "data" / "normal"
    data.mkdir(parents=True)
    cv2.imwrite(str(data / ("r" * 250 + ".jpg")), photo)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["augment", str(tmp_path / "data"), "--out", str(out), "--copies", "2"])
    assert result.exit_code == 0 and "wrote 2 images" in result.output
    assert sorted(len(p.name) for p in (out / "normal").iterdir()) == [255, 255]


@pytest.mark.parametrize("policy", sorted(AUGMENTATIONS))
def test_every_augmentation_policy_keeps_shape_and_range_and_changes_the_image(policy, cataract):
    photo = cv2.resize(cv2.imread(str(sorted((cataract / "normal").iterdir())[0])), (96, 96))
    batch = np.repeat(photo[None].astype(np.float32), 4, axis=0)
    views = np.asarray(make_augmenter(seed=1, policy=policy)(batch, training=True))
    assert views.shape == batch.shape
    assert views.min() >= 0 and views.max() <= 255
    assert all(not np.allclose(view, batch[0], atol=1) for view in views)


def test_copies_of_a_folder_labelled_by_a_sheet_take_their_sources_labels_and_patients(cataract, tmp_path):
    """``--labels`` finds ``scan.aug0.jpg`` (and ``scan.webp.aug0.png``) under its source's row."""
    from medclf.train.data import read_dataset
    from medclf.train.groups import listed_groups
    from medclf.train.labels_csv import read_labels_csv

    photos = sorted((cataract / "normal").iterdir())[:2]
    data = tmp_path / "data"
    data.mkdir()
    cv2.imwrite(str(data / "a.jpg"), cv2.imread(str(photos[0])))
    cv2.imwrite(str(data / "b.webp"), cv2.imread(str(photos[1])))
    (tmp_path / "sheet.csv").write_text("patient_id,image_id,label\nP1,a,normal\nP2,b.webp,cataract\n")
    result = CliRunner().invoke(app, ["augment", str(data), "--out", str(data), "--copies", "2"])
    assert result.exit_code == 0, result.output
    naming = read_labels_csv(str(tmp_path / "sheet.csv"))
    folder = read_dataset(data, naming=naming)
    labels = {path.rsplit("/", 1)[1]: folder.classes[label] for path, label in zip(folder.paths, folder.labels)}
    assert labels == {"a.jpg": "normal", "a.aug0.jpg": "normal", "a.aug1.jpg": "normal", "b.webp": "cataract",
                      "b.webp.aug0.png": "cataract", "b.webp.aug1.png": "cataract"}
    groups = dict(zip((p.rsplit("/", 1)[1] for p in folder.paths), listed_groups(folder, naming)))
    assert groups["a.aug1.jpg"] == groups["a.jpg"] != groups["b.webp.aug0.png"] == groups["b.webp"]


def test_class_folders_that_split_themselves_and_a_sheet_given_as_labels_keep_held_out_images_real(cataract,
                                                                                                    tmp_path, caplog):
    """``NORMAL/{Train,Test}`` (as training reads it), and a split column in a sheet elsewhere (``--labels``):
    their test images were augmented too, and their copies scored as test images."""
    photos = sorted((cataract / "normal").iterdir())[:4]
    for name in ("cataract", "normal"):
        for split, photo in (("Train", photos[0]), ("Train", photos[1]), ("Test", photos[2])):
            (tmp_path / "cf" / name / split).mkdir(parents=True, exist_ok=True)
            (tmp_path / "cf" / name / split / photo.name).symlink_to(photo)
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, ["augment", str(tmp_path / "cf"), "--out", str(tmp_path / "cf"),
                                          "--copies", "1"])
    assert result.exit_code == 0 and "wrote 4 images" in result.output, result.output
    assert not list((tmp_path / "cf").rglob("Test/*.aug*"))
    assert "every class folder is split itself: its training folders alone are augmented, test left out" \
        in caplog.text
    (tmp_path / "imgs").mkdir()
    for photo in photos:
        (tmp_path / "imgs" / photo.name).symlink_to(photo)
    (tmp_path / "meta").mkdir()
    rows = "".join(f"{photo.name},normal,{split}\n" for photo, split in zip(photos, ("train", "train", "val", "test")))
    (tmp_path / "meta" / "meta.csv").write_text("image,label,split\n" + rows)
    result = CliRunner().invoke(app, ["augment", str(tmp_path / "imgs"), "--out", str(tmp_path / "imgs"),
                                      "--labels", str(tmp_path / "meta" / "meta.csv")])
    assert result.exit_code == 0 and "wrote 10 images" in result.output, result.output  # 2 sources x 5
    assert {path.name.split(".aug")[0] for path in (tmp_path / "imgs").glob("*.aug*")} == \
        {photo.stem for photo in photos[:2]}


def test_copies_of_a_run_stopped_midway_or_of_a_folder_moved_since_are_removed_when_not_written_again(cataract,
                                                                                                     tmp_path):
    """Listed only once all were written, a stopped run's copies stayed for good; listed by where DATA was, a
    folder augmented in place and then renamed kept every copy of an image removed since, trained on."""
    from medclf.train.augment import augment_folder

    data = two_photos_a_class(cataract, tmp_path / "data")
    run = augment_folder(data, data, copies=3)
    next(run)  # one image's copies written, then the run is stopped
    run.close()
    assert len(list(data.rglob("*.aug*"))) == 3
    list(augment_folder(data, data, copies=1))
    assert sorted(path.name for path in data.rglob("*.aug*")) == sorted(
        f"{photo.stem}.aug0{photo.suffix}" for photo in data.glob("*/*.*") if ".aug" not in photo.name)
    data.rename(tmp_path / "moved")
    moved = tmp_path / "moved"
    gone = sorted(path for path in (moved / "normal").glob("*.*") if ".aug" not in path.name)[0]
    gone.unlink()
    list(augment_folder(moved, moved, copies=1))
    assert not list((moved / "normal").glob(f"{gone.stem}.aug*"))


def test_the_list_an_earlier_medclf_kept_under_the_data_folders_path_is_taken_over(cataract, tmp_path):
    """Copies listed under DATA's absolute path (before 2026-12-07) were found no more: kept, trained on."""
    import hashlib
    import json
    import os

    from medclf.train.augment import augment_folder

    data = two_photos_a_class(cataract, tmp_path / "data")
    list(augment_folder(data, data, copies=2))
    record = next(data.glob(".medclf-augment-*.json"))
    legacy = data / f".medclf-augment-{hashlib.sha256(os.fsencode(data.resolve())).hexdigest()[:12]}.json"
    record.rename(legacy)
    list(augment_folder(data, data, copies=1))
    assert not list(data.rglob("*.aug1.*")) and not legacy.exists()
    assert len(json.loads(record.read_text())) == 4
