"""The inputs ``medclf-run`` is given, as they come from shells, lab systems and shares: globs, worklists in
Windows' encodings and ``find -print0``'s, folders some of which cannot be read."""

from __future__ import annotations

import codecs
import os
import shutil
from pathlib import Path

import pytest

from medclf.runtime.inputs import expand_inputs, is_image_file, listed_inputs
from medclf.runtime.preprocess import ImageError, read_bytes

NAMES = ["/scans/a b.jpeg", "/scans/ünï.png"]


@pytest.mark.parametrize("data", [
    "\n".join(NAMES).encode() + b"\n",
    codecs.BOM_UTF8 + "\r\n".join(NAMES).encode() + b"\r\n",  # Notepad, Excel's "CSV UTF-8"
    "\r\n".join(NAMES).encode("utf-16"),  # PowerShell's `dir -Name > list.txt`: UTF-16 with its mark
    b"\0".join(name.encode() for name in NAMES) + b"\0",  # find -print0
], ids=["utf-8", "utf-8 with a mark", "utf-16", "print0"])
def test_a_worklist_is_read_as_its_writer_meant_it(data, tmp_path):
    worklist = tmp_path / "list.txt"
    worklist.write_bytes(data)
    assert listed_inputs(str(worklist)) == NAMES


def test_a_utf16_worklist_with_a_line_appended_in_another_encoding_is_still_read(tmp_path):
    """``echo scan.jpg >> list.txt`` onto PowerShell's UTF-16 list: a traceback before, now that line's name
    fails as an input and the others are classified."""
    worklist = tmp_path / "list.txt"
    worklist.write_bytes(("\r\n".join(NAMES) + "\r\n").encode("utf-16") + b"/scans/c.png\n")
    assert listed_inputs(str(worklist))[:2] == NAMES


def test_a_glob_that_matches_class_folders_classifies_their_images(tmp_path, blood_cell_images):
    """`medclf-run 'TEST/*'` matched the four class folders and classified nothing of them (exit 0)."""
    for i, image in enumerate(blood_cell_images[:3]):
        (tmp_path / f"class{i}").mkdir()
        shutil.copy(image, tmp_path / f"class{i}" / "cell.jpeg")
    shutil.copy(blood_cell_images[3], tmp_path / "loose.jpeg")
    (tmp_path / "empty").mkdir()
    assert list(expand_inputs([str(tmp_path / "*")])) == [
        *(str(tmp_path / f"class{i}" / "cell.jpeg") for i in range(3)),
        str(tmp_path / "empty"),  # reported in its place: no image in this folder
        str(tmp_path / "loose.jpeg")]


def test_a_recursive_glob_gives_each_image_once_and_what_a_folder_leaves_out_stays_out(tmp_path, blood_cell_images,
                                                                                         monkeypatch):
    """``**`` matches the folder, the folders in it and their files: each image was classified three times, and
    the masks and notes beside them as inputs of their own."""
    for name in ("a", "b"):
        (tmp_path / "g" / name).mkdir(parents=True)
        shutil.copy(blood_cell_images[0], tmp_path / "g" / name / "x.png")
    shutil.copy(blood_cell_images[0], tmp_path / "g" / "a" / "x_mask.png")
    (tmp_path / "g" / "a" / "readme.txt").write_text("notes")
    monkeypatch.chdir(tmp_path)
    masks: list = []
    assert list(expand_inputs(["./g/**"], masks)) == ["g/a/x.png", "g/b/x.png"]
    assert masks == [Path("g/a/x_mask.png")]  # said once
    monkeypatch.chdir(tmp_path / "g")
    assert list(expand_inputs(["./**"])) == ["a/x.png", "b/x.png"]  # the folder "." matched as well


def test_a_sub_folder_that_cannot_be_listed_is_an_input_whose_error_says_so(tmp_path, blood_cell_images):
    shutil.copy(blood_cell_images[0], tmp_path / "cell.jpeg")
    locked = tmp_path / "patient2"
    locked.mkdir(mode=0)
    if os.access(locked, os.R_OK):  # root reads any folder: a link to one the kernel refuses even root
        locked.rmdir()
        locked.symlink_to("/proc/1/map_files")
        try:
            os.listdir(locked)
            pytest.skip("no folder here that this user cannot list")
        except OSError:
            pass
    assert list(expand_inputs([str(tmp_path)])) == [str(tmp_path / "cell.jpeg"), str(locked)]
    with pytest.raises(ImageError, match="a folder that cannot be listed"):
        read_bytes(locked)


def test_a_name_holding_a_nul_byte_is_a_failed_input_not_a_crash():
    with pytest.raises(ImageError, match="it holds a NUL byte"):
        read_bytes("/scans/a\0b.jpeg")


@pytest.mark.parametrize("name", ["image.dicom", "IMG.DIC", "photo.jfif"])
def test_the_names_dicom_and_jpeg_files_go_by_are_picked_from_folders(name, tmp_path):
    """VinDr-CXR names its films `.dicom`; Windows saves web JPEGs as `.jfif`."""
    assert is_image_file(tmp_path / name)


def _encoded(suffix: str, image) -> bytes:
    import io

    import cv2

    if suffix == ".j2k":  # a bare JPEG 2000 codestream, which OpenCV reads but does not write
        from PIL import Image

        out = io.BytesIO()
        Image.fromarray(image).save(out, "JPEG2000", no_jp2=True)
        return out.getvalue()
    if suffix == ".IMA":  # Siemens scanners' name for their DICOM exports
        from tests.image_files import dicom_bytes

        return dicom_bytes(image)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    ok, encoded = cv2.imencode({".jpe": ".jpg"}.get(suffix, suffix), grey > 127 if suffix == ".pbm" else image)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("suffix", [".jpe", ".j2k", ".pnm", ".pbm", ".IMA"])
def test_every_name_an_image_goes_by_that_decodes_when_named_is_also_picked_from_its_folder(suffix, tmp_path,
                                                                                            blood_cell_images):
    """Files the decoders read when named were skipped in folders without a word (a Siemens MR export of .IMA
    files: 'all inputs classified')."""
    import cv2

    from medclf.runtime.preprocess import read_image

    if suffix == ".IMA":
        pytest.importorskip("pydicom", reason="pydicom (medclf[dicom]) is not installed")
    smear = cv2.cvtColor(cv2.imread(str(blood_cell_images[0])), cv2.COLOR_BGR2RGB)[:64, :80].copy()
    (tmp_path / f"scan{suffix}").write_bytes(_encoded(suffix, smear))
    assert list(expand_inputs([str(tmp_path)])) == [str(tmp_path / f"scan{suffix}")]
    assert read_image(tmp_path / f"scan{suffix}").shape == (64, 80, 3)


def test_heatmaps_medclf_wrote_among_the_images_are_not_taken_for_images(tmp_path, blood_cell_images):
    """medclf-run --cam into the input folder, run again, classified its own heatmaps (explain and training the
    same); scans whose names merely hold "cam" stay."""
    from medclf.runtime.cam import overlay_name

    for image in blood_cell_images[:2]:
        shutil.copy(image, tmp_path / image.name)
    overlays = [overlay_name(str(tmp_path / blood_cell_images[0].name), "EOSINOPHIL", kind) for kind in
                ("cam", "gradcam", "gradcam-block_13_expand_relu")]
    for name in [*overlays, "cam.png", "scan.cam.png", "left-deadbeef.png"]:
        shutil.copy(blood_cell_images[0], tmp_path / name)
    listed = {Path(path).name for path in expand_inputs([str(tmp_path)])}
    assert listed == {image.name for image in blood_cell_images[:2]} | {"cam.png", "scan.cam.png",
                                                                         "left-deadbeef.png"}
