"""Augmented copies of one source image are found and kept on one side of a split (real blood-cell data)."""

from __future__ import annotations

import cv2
import numpy as np

from medclf.train.copies import COPY_DISTANCE, _components, colour_signature, copy_groups, detected_copies
from medclf.train.data import read_folder
from medclf.train.splits import load_splits, stratified_split


def test_turned_and_mirrored_copies_share_a_group_and_other_cells_do_not(blood_cells, tmp_path):
    cells = sorted((blood_cells / "TEST" / "LYMPHOCYTE").iterdir())[:40]
    source = cv2.imread(str(cells[0]))
    copies = [cv2.rotate(source, cv2.ROTATE_90_CLOCKWISE), cv2.flip(source, 1), np.roll(source, 12, axis=1)]
    paths = []
    for i, image in enumerate(copies):
        paths.append(str(tmp_path / f"copy{i}.png"))
        cv2.imwrite(paths[-1], image)
    paths += [str(p) for p in cells]
    groups = copy_groups(tuple(paths), np.zeros(len(paths), np.int64))
    assert len(set(groups[[0, 1, 2, len(copies)]])) == 1  # the copies and their source
    assert len(np.unique(groups)) >= 5  # forty files (TEST holds copies too) are several sources, not one


def test_an_unreadable_file_is_its_own_group(blood_cell_images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert colour_signature(str(broken)) is None
    groups = copy_groups((str(broken), str(blood_cell_images[0])), np.array([0, 0]))
    assert groups[0] != groups[1]


def test_a_copy_aware_split_holds_out_whole_sources(blood_cells):
    folder = read_folder(blood_cells / "TEST")
    groups = copy_groups(folder.paths, folder.labels)
    train, val = stratified_split(folder, 0.2, seed=0, groups=groups)
    index = {path: i for i, path in enumerate(folder.paths)}
    train_groups = {groups[index[p]] for p in train.paths}
    assert not train_groups & {groups[index[p]] for p in val.paths}
    assert 0.1 < len(val) / len(folder) < 0.3 and len(np.unique(groups)) < len(folder) / 10


def test_pre_augmented_data_is_recognised_and_split_by_source_without_being_asked(blood_cells):
    folder = read_folder(blood_cells / "TEST")
    groups = detected_copies(folder.paths, folder.labels)
    assert groups is not None and len(np.unique(groups)) == 100  # TEST is 100 cells, ~25 copies each
    splits = load_splits(blood_cells / "TEST", val_split=0.2, group_copies=None)
    assert "whole sources" in splits.held_out
    val_groups = {groups[folder.paths.index(p)] for p in splits.val.paths}
    assert not val_groups & {groups[folder.paths.index(p)] for p in splits.train.paths}


def test_grey_films_that_chain_together_and_photos_without_copies_are_split_image_by_image(chest_xray, cataract):
    films = read_folder(chest_xray / "test")  # 8-bin brightness histograms chain most films into one "group"
    assert detected_copies(films.paths, films.labels) is None
    assert len(np.unique(copy_groups(films.paths, films.labels))) == len(films)  # grey: each film its own group
    signatures = np.stack([colour_signature(path) for path in films.paths])  # why: brightness alone chains them,
    assert _components(signatures, COPY_DISTANCE, most=len(films) // 10) is None  # and the search stops there
    assert detected_copies(*_paths_and_labels(cataract)) is None  # two near-identical photos of 59
    assert "at random" in load_splits(cataract, val_split=0.2, group_copies=None).held_out


def test_a_class_of_grey_films_beside_classes_of_copies_is_not_one_film_group(blood_cells, chest_xray):
    """Cells shipped as copies beside films that are not: the cells keep their copy groups, while the films,
    whose brightness histograms chain together, are each their own (one "group" of most of them would sit
    wholly on one side of a split)."""
    cells = read_folder(blood_cells / "TEST")
    films = sorted((chest_xray / "test" / "NORMAL").iterdir())[:60]
    keep = np.flatnonzero(cells.labels < 2)[:500]
    paths = tuple(cells.paths[i] for i in keep) + tuple(map(str, films))
    labels = np.concatenate([cells.labels[keep], np.full(len(films), 2)])
    groups = detected_copies(paths, labels)
    assert groups is not None and len(np.unique(groups[labels == 2])) == len(films)
    assert len(np.unique(groups[labels < 2])) < 60  # the cells' copies are still found: 500 images of a few dozen
    films_first = copy_groups(tuple(map(str, films)) + tuple(cells.paths[i] for i in keep),
                              np.concatenate([np.zeros(len(films), int), cells.labels[keep] + 1]))
    assert not set(films_first[:len(films)]) & set(films_first[len(films):])  # no film in a group of cells


def test_asking_for_copy_groups_or_declining_them_overrides_the_automatic_choice(cataract, blood_cells):
    assert "whole sources" in load_splits(cataract, val_split=0.2, group_copies=True).held_out
    assert "at random" in load_splits(blood_cells / "TEST", val_split=0.2, group_copies=False).held_out


def _paths_and_labels(root):
    folder = read_folder(root)
    return folder.paths, folder.labels


def test_a_big_jpeg_gets_nearly_the_signature_of_its_full_size_decode(cataract, tmp_path):
    """Big JPEGs are decoded shrunk for their histogram; a copy of one must still read as a copy."""
    from medclf.runtime.preprocess import read_image

    photo = cv2.imread(str(max(cataract.glob("*/*"), key=lambda p: p.stat().st_size)))  # an eye, in colour
    jpeg, png = tmp_path / "big.jpg", tmp_path / "big-decoded.png"
    cv2.imwrite(str(jpeg), cv2.resize(photo, (2400, 2000), interpolation=cv2.INTER_CUBIC))
    cv2.imwrite(str(png), cv2.cvtColor(read_image(str(jpeg)), cv2.COLOR_RGB2BGR))  # its full decode; PNG: no shrink
    assert 1.0 - float(colour_signature(str(jpeg)) @ colour_signature(str(png))) < 0.2 * COPY_DISTANCE


def test_on_many_files_a_sample_is_searched_first_and_all_only_when_it_shows_copies(blood_cells, chest_xray,
                                                                                   monkeypatch):
    from medclf.train import copies

    read = []
    monkeypatch.setattr(copies, "colour_signature", lambda path: read.append(path) or colour_signature(path))
    monkeypatch.setattr(copies, "LOOK_FIRST", 500)
    films = read_folder(chest_xray / "test")  # 624 films, no copies
    assert copies.detected_copies(films.paths, films.labels) is None and len(read) == 500
    read.clear()
    cells = read_folder(blood_cells / "TEST")  # 100 cells, ~25 copies each: a fifth of them show it
    groups = copies.detected_copies(cells.paths, cells.labels)
    assert len(read) == 500 + len(cells) and len(np.unique(groups)) == 100
