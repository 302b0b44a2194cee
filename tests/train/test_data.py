"""Folder-per-class datasets: what counts as a class, how labels are read, and the decode-once cache."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medclf.runtime.preprocess import Preprocess, load_image
from medclf.train.data import DatasetError, ImageFolder, load_arrays, predict_folder, read_folder, read_named
from medclf.train.labellers import NameLabels

from .trees import make_tree


def test_classes_are_sorted_folder_names_and_hidden_things_are_ignored(tmp_path, blood_cell_images):
    make_tree(tmp_path, {"b": 2, "a": 3, ".cache": 2, "empty": 0}, blood_cell_images[0])
    (tmp_path / "a" / ".DS_Store").write_text("x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "__MACOSX" / "a").mkdir(parents=True)  # what unzipping a macOS archive leaves beside the classes
    (tmp_path / "__MACOSX" / "a" / "._img0.jpeg").write_bytes(b"\x00\x05\x16\x07")
    folder = read_folder(tmp_path)
    assert folder.classes == ("a", "b")
    assert folder.class_counts() == {"a": 3, "b": 2}


def test_folders_a_nas_or_windows_keeps_among_the_classes_are_neither_classes_nor_images(tmp_path,
                                                                                       blood_cell_images):
    """Synology's @eaDir holds resized copies of every image (in validation, beside their originals in training:
    16 of 18 validation images were); a USB drive's $RECYCLE.BIN became a class."""
    make_tree(tmp_path, {"a": 3, "b": 2}, blood_cell_images[0])
    for image in (tmp_path / "a").iterdir():
        thumbnails = tmp_path / "a" / "@eaDir" / image.name
        thumbnails.mkdir(parents=True)
        shutil.copy(image, thumbnails / "SYNOPHOTO_THUMB_S.jpg")
    make_tree(tmp_path / "$RECYCLE.BIN", {"S-1-5-21": 2}, blood_cell_images[1])
    folder = read_folder(tmp_path)
    assert folder.classes == ("a", "b") and folder.class_counts() == {"a": 3, "b": 2}


def test_what_medclf_wrote_inside_a_dataset_is_not_read_as_its_images(tmp_path, blood_cell_images, caplog):
    """``medclf train data --out data/run`` puts a run's pictures (roc.png, curves.png) in the dataset: the next
    run must not learn them, as a class ``run`` or as loose images labelled by their names."""
    make_tree(tmp_path / "classes", {"cat": 2, "dog": 2}, blood_cell_images[0])
    for run in (tmp_path / "classes" / "run", tmp_path / "classes" / "cat" / "run", tmp_path / "loose" / "run"):
        make_tree(run, {"evaluation-test": 1}, blood_cell_images[0])
        shutil.copy(blood_cell_images[1], run / "roc.png")
        (run / "preprocess.json").write_text("{}")
        (run / "evaluation-test" / "metrics.json").write_text("{}")
    for k in range(4):
        shutil.copy(blood_cell_images[k], tmp_path / "loose" / f"{('cat', 'dog')[k % 2]}.{k}.png")
    with caplog.at_level(logging.WARNING):
        assert read_folder(tmp_path / "classes").class_counts() == {"cat": 2, "dog": 2}
        assert read_named(tmp_path / "loose", NameLabels(".")).class_counts() == {"cat": 2, "dog": 2}
    assert caplog.messages == [
        f"{tmp_path / 'classes' / 'run'}: written by medclf (a run, an evaluation), not a class: left out",
        f"{tmp_path / 'classes'}: 2 images in folders medclf wrote (cat/run) left out: a run's pictures are not data",
        f"{tmp_path / 'loose'}: 2 images in folders medclf wrote (run) left out: a run's pictures are not data"]


def test_a_class_folder_without_images_is_named_in_a_warning(tmp_path, blood_cell_images, caplog):
    """A class whose photos are all in a format medclf does not read (a phone's HEIC) must not vanish unsaid."""
    make_tree(tmp_path, {"a": 2, "b": 2, "c": 0}, blood_cell_images[0])
    for i in range(3):
        (tmp_path / "c" / f"IMG_{i}.heic").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path).classes == ("a", "b")
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'c'}: no image in it (it holds 3 .heic "
                                                        "files), so it is not a class"]
    caplog.clear()
    with caplog.at_level("WARNING"):  # a test folder of known classes: c is one, only without test images
        assert read_folder(tmp_path, ("a", "b", "c")).class_counts() == {"a": 2, "b": 2, "c": 0}
    assert not caplog.records


def test_class_folders_differing_only_in_case_are_named_in_a_warning(tmp_path, blood_cell_images, caplog):
    """``Normal/`` beside ``normal/`` trained silently as two classes splitting one class's images."""
    make_tree(tmp_path, {"Cataract": 2, "Normal": 2, "normal": 2, "Effusion": 2, "Effusion ": 2},
              blood_cell_images[0])
    with caplog.at_level("WARNING"):
        assert read_folder(tmp_path).classes == ("Cataract", "Effusion", "Effusion ", "Normal", "normal")
    assert [r.getMessage() for r in caplog.records] == [  # a trailing space, invisible in every table: quoted
        f"{tmp_path}: classes Effusion and 'Effusion ' differ only in case or accents and are trained as 2 classes: "
        "if they are one, move their images into one folder",
        f"{tmp_path}: classes Normal and normal differ only in case or accents and are trained as 2 classes: if "
        "they are one, move their images into one folder"]


def test_classes_spelt_with_composed_and_decomposed_accents_are_one_name_to_compare(tmp_path, blood_cell_images,
                                                                                      caplog):
    """macOS writes É as E and a combining accent: a test/ folder copied from Linux did not match its train/
    folder ("classes ['Éosinophile'] are not among the training classes ['Éosinophile', ...]"), and two training
    spellings, or two labels' cases in a labels sheet, trained as two classes without a word."""
    import unicodedata

    from medclf.runtime.class_names import matching_class
    from medclf.train.labellers import NameLabels

    composed, decomposed = (unicodedata.normalize(form, "Éosinophile") for form in ("NFC", "NFD"))
    assert matching_class(composed, (decomposed, "Lymphocyte")) == decomposed
    make_tree(tmp_path / "folders", {composed: 2, decomposed: 2}, blood_cell_images[0])
    make_tree(tmp_path / "named", {"": 0}, blood_cell_images[0])
    for name in ("Cataract_1.jpeg", "cataract_2.jpeg", "normal_1.jpeg"):
        (tmp_path / "named" / name).write_bytes(blood_cell_images[0].read_bytes())
    with caplog.at_level("WARNING"):
        read_folder(tmp_path / "folders")
        read_named(tmp_path / "named", NameLabels("_"))
    said = " ".join(caplog.messages)
    assert "differ only in case or accents and are trained as 2 classes: if they are one, move their" in said
    assert "classes Cataract and cataract differ only in case or accents" in said and "spell them alike" in said


def test_arrays_are_the_runtime_preprocessing_exactly_and_cached(tmp_path, blood_cells):
    folder = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 300))
    spec = Preprocess(96, 128)
    images, labels, kept = load_arrays(folder, spec, cache_dir=tmp_path)
    assert images.dtype == np.uint8 and images.shape == (8, 96, 128, 3)
    for path, image in zip(kept.paths, images):  # training sees exactly what the runtime serves
        assert np.array_equal(image, load_image(path, spec))
    cached, cached_labels, _ = load_arrays(folder, spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*.npz"))) == 1
    assert np.array_equal(cached, images) and np.array_equal(cached_labels, labels)


def test_a_file_replaced_by_one_of_its_size_and_time_is_decoded_again_not_taken_from_the_cache(tmp_path,
                                                                                               blood_cells):
    """Replaced by random bytes of the same size and ``touch -r``'d to the original's time, a training image was
    read back from the cache as it was (and trained on), where a fresh run refuses it."""
    for path in read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 600)).paths:
        (tmp_path / "data" / Path(path).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, tmp_path / "data" / Path(path).parent.name)
    folder, spec = read_folder(tmp_path / "data"), Preprocess(32, 32)
    assert load_arrays(folder, spec, cache_dir=tmp_path / "cache")[0].shape[0] == 4
    victim = Path(folder.paths[0])
    times = victim.stat()
    victim.write_bytes(np.random.default_rng(0).bytes(times.st_size))
    os.utime(victim, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert load_arrays(folder, spec, cache_dir=tmp_path / "cache")[0].shape[0] == 3  # refused, not cached pixels


def test_a_cache_made_by_other_decoders_is_not_read(tmp_path, blood_cells, monkeypatch):
    """Damaged JPEGs decoded with grey fill before are refused now: their old arrays must not come back."""
    import medclf.train.data as data

    folder, spec = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 600)), Preprocess(32, 32)
    load_arrays(folder, spec, cache_dir=tmp_path)
    monkeypatch.setattr(data, "DECODING_VERSION", data.DECODING_VERSION + 1)
    load_arrays(folder, spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*.npz"))) == 2


def test_a_cache_made_with_other_optional_decoders_installed_is_not_read(tmp_path, blood_cells, monkeypatch):
    """DICOM files skipped for want of pydicom stayed skipped, from the cache, once it was installed."""
    import medclf.train.data as data
    from medclf.runtime.dicom import optional_decoders

    assert "pydicom" in optional_decoders()  # medclf[dicom], installed with the tests
    folder, spec = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 600)), Preprocess(32, 32)
    load_arrays(folder, spec, cache_dir=tmp_path)
    monkeypatch.setattr(data, "optional_decoders", lambda: "")  # as before pydicom was installed
    load_arrays(folder, spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*.npz"))) == 2


def test_file_and_class_names_in_any_encoding_train_and_cache(tmp_path, blood_cell_images):
    """A Latin-1 file name (not UTF-8) and non-ASCII class names: decoded, cached and read back like any other
    (the cache key's encoding raised on the Latin-1 name and stopped training)."""
    root = tmp_path / "data"
    for image, name in zip(blood_cell_images[::2], ("Éosinophile", "Lymphocyte ✓", "Monocyte", "Neutrophile")):
        (root / name).mkdir(parents=True)
        shutil.copy(image, os.fsencode(root / name) + b"/cellule_\xe9.jpeg")
        shutil.copy(image, root / name / "b.jpeg")
    folder = read_folder(root)
    assert folder.classes == ("Lymphocyte ✓", "Monocyte", "Neutrophile", "Éosinophile")
    spec = Preprocess(32, 32)
    images, labels, kept = load_arrays(folder, spec, cache_dir=tmp_path / "cache")
    assert len(kept) == 8 and np.array_equal(load_arrays(folder, spec, cache_dir=tmp_path / "cache")[0], images)


def test_the_decoded_image_cache_never_costs_a_run_its_work(tmp_path, blood_cell_images, caplog):
    """A broken link among the files (it stopped training while the cache key was made), a cache folder that
    cannot be made (a full disk alike) and a damaged cache file: each is said, and the arrays come back."""
    root = tmp_path / "data"
    make_tree(root, {"A": 3, "B": 3}, blood_cell_images[0])
    (root / "A" / "gone.jpeg").symlink_to(tmp_path / "nowhere.jpeg")
    folder, spec = read_folder(root), Preprocess(32, 32)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING):
        images, _, kept = load_arrays(folder, spec, cache_dir=blocked / "cache")
    assert len(kept) == 6 and "could not cache the decoded images" in caplog.text
    cache = tmp_path / "cache"
    load_arrays(folder, spec, cache_dir=cache)
    [saved] = cache.glob("images-*.npz")
    saved.write_bytes(saved.read_bytes()[:100])  # damaged
    with caplog.at_level(logging.WARNING):
        again, _, _ = load_arrays(folder, spec, cache_dir=cache)
    assert "unreadable cache of decoded images" in caplog.text and np.array_equal(again, images)


def test_unreadable_training_files_are_skipped_with_a_line(tmp_path, blood_cell_images, capsys):
    data = tmp_path / "data"
    make_tree(data, {"a": 2, "b": 2}, blood_cell_images[0])
    (data / "a" / "broken.jpeg").write_text("garbage")
    for _ in range(2):  # decoded, then from the cache: the broken file is reported both times
        images, labels, kept = load_arrays(read_folder(data), Preprocess(32, 32), cache_dir=tmp_path / "cache")
        assert len(images) == 4 and not any(p.endswith("broken.jpeg") for p in kept.paths)
        assert capsys.readouterr().err.count("broken.jpeg: a text file, not an image") == 1


def test_scoring_decodes_a_chunk_at_a_time_and_gives_what_decoding_everything_gives(tmp_path, blood_cells, capsys):
    folder = read_folder(blood_cells / "TEST").subset(np.arange(0, 2400, 240))
    broken = [tmp_path / "broken1.jpeg", tmp_path / "broken2.jpeg"]
    for path in broken:
        path.write_text("garbage")
    # Ten images, then a chunk of nothing readable: it is skipped, each of its files reported on its own line.
    folder = ImageFolder(folder.paths + tuple(map(str, broken)), np.r_[folder.labels, 0, 1], folder.classes)
    spec = Preprocess(32, 32)
    images, labels, kept = load_arrays(folder, spec)
    mean_pixel = lambda x: x.reshape(len(x), -1).mean(axis=1)  # noqa: E731 - stands in for a model

    chunked_labels, outputs, chunked_kept = predict_folder(folder, spec, mean_pixel, chunk=5)
    assert np.array_equal(chunked_labels, labels) and np.array_equal(outputs, mean_pixel(images))
    assert chunked_kept.paths == kept.paths and len(kept) == 10
    assert capsys.readouterr().err.count("a text file, not an image") == 4  # each broken file, once per decoding

    with pytest.raises(DatasetError, match="none of the 2 images"):
        predict_folder(folder.subset(np.array([10, 11])), spec, mean_pixel)


def test_labels_come_from_file_names_with_a_separator_and_position(tmp_path, cataract):
    photos = sorted((cataract / "cataract").iterdir())[:3] + sorted((cataract / "normal").iterdir())[:2]
    for i, photo in enumerate(photos):
        kind = "cataract" if "cataract" in str(photo.parent.name) else "normal"
        (tmp_path / f"eye_{kind}_{i}{photo.suffix}").symlink_to(photo)
    folder = read_named(tmp_path, NameLabels("_", 1))
    assert folder.classes == ("cataract", "normal") and folder.class_counts() == {"cataract": 3, "normal": 2}
    assert NameLabels(".", 0).label(Path("cat.123.jpg")) == "cat"
    with pytest.raises(DatasetError, match="no label part"):
        read_named(tmp_path, NameLabels("-", 0))




def test_an_unreadable_file_does_not_double_the_memory_the_decoded_images_take(tmp_path, blood_cell_images):
    """The readable images were copied out of the full array (80,000 training images: 4 GiB more at the peak)."""
    import tracemalloc

    data = tmp_path / "data"
    make_tree(data, {"a": 150, "b": 150}, blood_cell_images[0])
    (data / "a" / "broken.jpeg").write_text("garbage")
    spec = Preprocess(128, 128)
    whole = load_arrays(read_folder(data), spec)[0]  # no cache: decoded both times
    tracemalloc.start()
    images, _, kept = load_arrays(read_folder(data), spec)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(kept) == 300 and np.array_equal(images, whole)
    array = 301 * images[0].nbytes  # what decoding them all takes, besides a few images read ahead
    assert peak < 1.5 * array, f"peak {peak / 1e6:.1f} MB for {array / 1e6:.1f} MB"
