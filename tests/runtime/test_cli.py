"""``medclf-run``: the JSON contract line by line, exit codes, folders and globs, the readable table."""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from medclf.runtime import DEFAULT_MODEL, Classifier

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the packaged default model is missing")


@functools.cache
def packaged_sha256() -> str:
    return hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medclf.runtime.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_json_gives_one_object_per_input_with_the_contract_keys(blood_cell_images):
    done = run("--json", "--top-k", "3", *map(str, blood_cell_images))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == list(map(str, blood_cell_images))
    labels = set(Classifier().labels)
    for line in lines:
        # the contract's keys, and the packaged model's unfamiliarity output (a smear: like its training images)
        assert set(line) == {"path", "label", "probability", "top_k", "unfamiliarity", "unlike_training",
                             "model_sha256"}
        assert line["model_sha256"] == packaged_sha256()  # what a log keeps of the model that answered
        assert line["unfamiliarity"] >= 0.0 and line["unlike_training"] == (line["unfamiliarity"] > 1)
        assert line["label"] in labels and 0.0 <= line["probability"] <= 1.0
        assert len(line["top_k"]) == 3 and line["top_k"][0] == [line["label"], line["probability"]]
        assert [p for _, p in line["top_k"]] == sorted((p for _, p in line["top_k"]), reverse=True)


def test_bad_inputs_are_reported_in_place_and_the_rest_classified(tmp_path, blood_cell_images):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    good = str(blood_cell_images[0])
    done = run("--json", good, str(fake), str(tmp_path / "missing.png"), good)
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [set(line) for line in lines][1:3] == [{"path", "error"}] * 2
    assert lines[1]["path"] == str(fake) and "a text file, not an image" in lines[1]["error"]
    assert lines[0]["label"] == lines[3]["label"]


def test_a_run_of_many_inputs_ends_with_how_many_got_each_call_on_stderr(tmp_path, blood_cell_images):
    """A folder of one smear's cells is a differential count; a day's films, how many were called positive."""
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    images = [str(path) for path in blood_cell_images[:6]]
    done = run("--json", *images, str(fake))
    calls = [json.loads(line).get("label") for line in done.stdout.splitlines()]
    labels = Classifier(DEFAULT_MODEL).labels
    shares = ", ".join(f"{label} {calls.count(label)} ({calls.count(label) / 6:.1%})" for label in labels)
    assert done.stderr.splitlines()[-1] == f"6 of 7 inputs classified: {shares}; 1 could not be"
    assert "inputs classified" not in run(images[0]).stderr  # one image: its row says it all


def test_folders_and_globs_expand_to_their_images(tmp_path, blood_cell_images):
    folder = tmp_path / "scans with spaces" / "ünïcode"
    folder.mkdir(parents=True)
    for i, image in enumerate(blood_cell_images[:3]):
        shutil.copy(image, folder / f"cell {i}.jpeg")
    (folder / ".hidden.jpeg").write_text("ignored")
    (folder / "readme.txt").write_text("ignored")
    by_folder = run("--json", str(tmp_path))
    by_glob = run("--json", str(folder / "*.jpeg"))
    assert by_folder.returncode == by_glob.returncode == 0
    assert by_folder.stdout == by_glob.stdout
    assert len(by_folder.stdout.splitlines()) == 3


def test_a_folders_segmentation_masks_are_left_out_in_one_line_and_a_mask_named_is_classified(
        tmp_path, blood_cell_images):
    """As training leaves them out: BUSI's ``benign (1)_mask.png`` outlines ``benign (1).png``."""
    for i, image in enumerate(blood_cell_images[:2]):
        shutil.copy(image, tmp_path / f"benign ({i}).jpeg")
        shutil.copy(image, tmp_path / f"benign ({i})_mask.jpeg")
    by_folder = run("--json", str(tmp_path))
    assert by_folder.returncode == 0
    assert [json.loads(line)["path"] for line in by_folder.stdout.splitlines()] == [
        str(tmp_path / "benign (0).jpeg"), str(tmp_path / "benign (1).jpeg")]
    assert by_folder.stderr.splitlines()[0] == (f"2 segmentation masks left out (e.g. {tmp_path}/benign (0)_mask.jpeg):"
                                                " outlines of the images beside them; name one to classify it")
    named = run("--json", str(tmp_path / "benign (0)_mask.jpeg"))
    assert named.returncode == 0 and len(named.stdout.splitlines()) == 1 and "left out" not in named.stderr


def test_auto_serves_one_image_from_the_cpu_and_probes_gpus_only_for_more(blood_cell_images):
    """A GPU's start-up took 2.5-3 s on an H200 against 0.6 s for the whole one-image run on its CPU."""
    one = run("--json", str(blood_cell_images[0]))
    assert one.returncode == 0 and json.loads(one.stdout)["path"] == str(blood_cell_images[0])
    assert "passed over" not in one.stderr  # no TensorRT or CUDA was tried
    two = run("--json", *map(str, blood_cell_images[:2]))
    assert two.returncode == 0 and "backend " in two.stderr and "(auto)" in two.stderr


def test_table_output_names_each_file(blood_cell_images):
    done = run(str(blood_cell_images[0]))
    assert done.returncode == 0
    assert blood_cell_images[0].name in done.stdout


def test_the_table_aligns_its_columns_across_names_of_any_length(tmp_path, blood_cell_images):
    """The widths come from the inputs and the model's labels, so rows can be printed as answers come."""
    names = ["a.jpeg", "a much longer file name.jpeg", "mid name.jpeg"]
    for name, image in zip(names, blood_cell_images):
        shutil.copy(image, tmp_path / name)
    done = run("--top-k", "2", *(str(tmp_path / name) for name in names))
    header, *rows = done.stdout.splitlines()
    assert len(rows) == 3 and header.split() == ["file", "label", "probability", "others"]
    for column in ("label", "probability", "others"):
        start = header.index(column)
        assert all(line[start - 1] == " " and line[start] != " " for line in rows), (column, rows)


def test_the_columns_line_up_in_a_terminal_for_names_in_any_script(tmp_path, blood_cell_images):
    """A CJK character takes two terminal columns, a combining accent none."""
    import unicodedata

    names = ["胸部X線 患者001.jpeg", "plain.jpeg", "cafe\u0301.jpeg"]
    for name, image in zip(names, blood_cell_images):
        shutil.copy(image, tmp_path / name)
    done = run(*(str(tmp_path / name) for name in names))
    lines = done.stdout.splitlines()
    known = Classifier().labels
    labels = ["label", *(next(label for label in known if f"  {label}" in line) for line in lines[1:])]

    def columns(text: str) -> int:
        return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
                   for c in text)

    starts = {columns(line[:line.index(f"  {label}") + 2]) for line, label in zip(lines, labels)}
    assert len(lines) == 4 and len(starts) == 1, done.stdout


def test_names_that_look_like_markup_are_printed_as_they_are(tmp_path, blood_cell_images):
    image = tmp_path / "scan[red][1].jpeg"
    shutil.copy(blood_cell_images[0], image)
    broken = tmp_path / "[bold]broken.jpeg"
    broken.write_text("not an image")
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", str(tmp_path / "*.jpeg")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "scan[red][1].jpeg" in done.stdout and "[bold]broken.jpeg" in done.stderr


def test_a_model_that_is_not_a_medclf_model_exits_2(tmp_path, blood_cell_images):
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x01")
    done = run("--model", str(bogus), str(blood_cell_images[0]))
    assert done.returncode == 2 and "bogus.onnx" in done.stderr


def test_a_run_folder_or_a_keras_file_given_as_the_model_says_what_to_give(tmp_path, blood_cell_images):
    """The first mistakes after training: pointing medclf-run at the run folder, or at model.keras."""
    run_dir = tmp_path / "run"
    (run_dir / "exported").mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL, run_dir / "exported" / "model.onnx")
    (run_dir / "model.keras").write_bytes(b"PK")
    folder = run("--model", str(run_dir), str(blood_cell_images[0]))
    assert folder.returncode == 2
    suggestion = run_dir / "exported" / "model.onnx"
    assert f"a folder; give the exported .onnx file; did you mean {suggestion}?" in folder.stderr
    keras_file = run("--model", str(run_dir / "model.keras"), str(blood_cell_images[0]))
    assert keras_file.returncode == 2 and "a Keras model; the runtime serves exported ONNX files: medclf export" \
        in keras_file.stderr


def test_csv_holds_one_row_per_input_including_failures(tmp_path, blood_cell_images):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    table = tmp_path / "out" / "results.csv"
    done = run("--csv", str(table), str(blood_cell_images[0]), str(fake), "--top-k", "2")
    assert done.returncode == 1
    import csv

    rows = list(csv.DictReader(table.open()))
    assert [row["path"] for row in rows] == [str(blood_cell_images[0]), str(fake)]
    assert rows[0]["label"] in Classifier().labels and len(rows[0]["top_k"].split(";")) == 2
    assert rows[1]["label"] == "" and "a text file, not an image" in rows[1]["error"]
    assert [row["model_sha256"] for row in rows] == [packaged_sha256()] * 2  # a spreadsheet names its model
    assert [row["tta"] for row in rows] == ["", ""]  # and says no test-time views were averaged
    assert [p.name for p in table.parent.iterdir()] == ["results.csv"]  # no temporary file left behind


def test_csv_cells_a_spreadsheet_would_run_are_made_inert(tmp_path, blood_cell_images):
    """A file named "=HYPERLINK(...).jpeg" ran as a formula in Excel, where clinics open the CSV."""
    import csv

    names = ["=HYPERLINK(\"x\").jpeg", "+1+1.jpeg", "@SUM(A1).jpeg", "plain.jpeg"]
    for name in names:
        (tmp_path / name).write_bytes(blood_cell_images[0].read_bytes())
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--csv", "results.csv", "--", *names],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # named as given: relative
    assert done.returncode == 0, done.stderr
    paths = [row["path"] for row in csv.DictReader((tmp_path / "results.csv").open())]
    assert paths == ["'=HYPERLINK(\"x\").jpeg", "'+1+1.jpeg", "'@SUM(A1).jpeg", "plain.jpeg"]
    from medclf.runtime.cli import _inert

    assert [_inert(cell) for cell in ("=1+1", "+1", "-2+3", "@A1", "\tx", "-", "cell.jpeg", "")] == [
        "'=1+1", "'+1", "'-2+3", "'@A1", "'\tx", "-", "cell.jpeg", ""]


@pytest.mark.parametrize("where", ["pipe", "file"])
def test_a_csv_to_standard_output_follows_the_table_whether_piped_or_redirected(where, tmp_path, blood_cell_images):
    """``--csv /dev/stdout``: written nowhere when piped (its link resolved to a pipe's name), and renamed over
    the file standard output was redirected to, the table lost."""
    out = tmp_path / "out.txt"
    with open(out, "w") as redirected:
        done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--csv", "/dev/stdout",
                               str(blood_cell_images[0])], text=True, timeout=120, stderr=subprocess.PIPE,
                              stdout=redirected if where == "file" else subprocess.PIPE)
    assert done.returncode == 0, done.stderr
    lines = (out.read_text() if where == "file" else done.stdout).splitlines()
    assert lines[0].startswith("file") and lines[2].startswith("path,label") and len(lines) == 4


def test_file_names_in_any_encoding_are_printed_and_written_to_the_csv(tmp_path, blood_cell_images):
    """A Latin-1 name from an old PACS share is not UTF-8: the table shows it with "?", the CSV keeps its bytes
    (it made the CSV writer raise at the very end, losing the whole file)."""
    latin1 = os.fsencode(tmp_path) + b"/r\xe9sultat.jpeg"
    unicode = tmp_path / "ünïcode ✓ name.jpeg"
    for name in (latin1, unicode):
        shutil.copy(blood_cell_images[0], name)
    table = tmp_path / "out.csv"
    done = run("--csv", str(table), str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path}/r?sultat.jpeg" in done.stdout and str(unicode) in done.stdout
    rows = table.read_bytes().splitlines()
    assert rows[1].startswith(latin1 + b",") and rows[2].startswith(os.fsencode(unicode) + b",")


def test_cam_with_a_model_exported_without_maps_is_refused_up_front(tmp_path, blood_cell_images):
    done = run("--cam", str(tmp_path / "heat"), str(blood_cell_images[0]))
    assert done.returncode == 2 and "medclf export --cam" in done.stderr
    assert not (tmp_path / "heat").exists()


def test_a_fifo_or_a_huge_file_is_refused_without_hanging(tmp_path, blood_cell_images):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:  # sparse: 2 GiB on paper, nothing on disk
        handle.truncate(2 << 30)
    done = run("--json", str(fifo), str(huge), str(blood_cell_images[0]))
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["error"] == "not a regular file" and "over the 1,073,741,824-byte limit" in lines[1]["error"]
    assert "label" in lines[2]


def test_a_folder_of_a_thousand_files_streams_through(tmp_path, blood_cell_images):
    source = blood_cell_images[0].read_bytes()
    for i in range(1000):
        (tmp_path / f"cell {i:04d}.jpeg").write_bytes(source)
    (tmp_path / "cell 0500.jpeg").write_bytes(source[:100])  # one truncated file in the middle
    done = run("--json", "--batch-size", "64", str(tmp_path))
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1 and len(lines) == 1000
    assert [line["path"].endswith(f"cell {i:04d}.jpeg") for i, line in enumerate(lines)] == [True] * 1000
    assert "error" in lines[500] and {line["label"] for i, line in enumerate(lines) if i != 500} == {lines[0]["label"]}


@pytest.mark.parametrize("option, reason", [(("--top-k", "0"), "at least 1"), (("--backend", "gpu"), "invalid choice"),
                                            (("--csv", "."), "is a folder")])
def test_bad_options_are_refused_before_any_work_with_exit_2(option, reason, blood_cell_images):
    done = run(*option, str(blood_cell_images[0]))
    assert done.returncode == 2 and done.stdout == ""
    assert reason in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("output", [[], ["--json"]], ids=["table", "json"])
def test_a_reader_that_stops_reading_ends_the_run_quietly_with_status_141(output, blood_cell_images):
    """``medclf-run DIR --json | head -1``: the shell's SIGPIPE status, no traceback."""
    process = subprocess.Popen([sys.executable, "-m", "medclf.runtime.cli", *output, *map(str, blood_cell_images)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the run (0.2 s of start-up) has written anything
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 141, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


def test_a_reader_that_stops_reading_still_gets_the_csv_asked_for_whole(tmp_path, blood_cell_images):
    """``medclf-run DIR --csv day.csv | head``: the screen's reader left; the file is the work to keep."""
    table = tmp_path / "day.csv"
    process = subprocess.Popen([sys.executable, "-m", "medclf.runtime.cli", "--csv", str(table),
                                *map(str, blood_cell_images)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 141 and "Traceback" not in stderr, stderr
    assert len(table.read_text().splitlines()) == 1 + len(blood_cell_images)


def test_the_command_flushes_every_result_before_it_exits(tmp_path, blood_cell_images):
    """``medclf-run`` skips the interpreter's teardown; what it printed and wrote must all be there."""
    csv_file = tmp_path / "out.csv"
    buffered = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--csv", str(csv_file),  # the table
                           *map(str, blood_cell_images * 3)], capture_output=True, text=True, timeout=120, env=buffered)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + 3 * len(blood_cell_images)
    assert len(csv_file.read_text().splitlines()) == 1 + 3 * len(blood_cell_images)


def test_each_damaged_file_costs_one_line_on_stderr_whatever_its_decoder_says(tmp_path, blood_cell_images):
    """A cut TIFF made OpenCV log two lines of its own before medclf's; a 32-bit integer TIFF (microscopy
    software writes them) made OpenCV's colour conversion raise and stopped the run."""
    import cv2
    import numpy as np
    from PIL import Image

    ok, tiff = cv2.imencode(".tif", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    cut = tmp_path / "cut.tif"
    cut.write_bytes(tiff.tobytes()[:8000])
    wide = tmp_path / "int32.tif"
    Image.fromarray(np.arange(-2000, 2000, dtype=np.int32).reshape(40, 100)).save(wide)
    done = run("--backend", "cpu", str(cut), str(wide), str(blood_cell_images[0]))
    assert done.returncode == 1
    error, tally, warning = done.stderr.splitlines()  # the error, the tally, and the grey ramp called unlike
    assert error == f"error {cut}: damaged or cut-short TIFF (cannot be decoded)"
    assert tally.startswith("2 of 3 inputs classified: ")
    assert warning.startswith(f"warning: {wide} is unlike the images the model was trained on")
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [str(wide), str(blood_cell_images[0])]


def test_a_header_declaring_absurd_dimensions_is_refused_before_decoding_in_any_format(tmp_path):
    """A 54-byte BMP that declares 20000x20000 pixels: OpenCV would allocate 1.2 GB for it (as for a 10 kB WebP
    of 16000x16000, measured: 1.6 GB resident, 0.9 s). Formats whose headers OpenCV reads are held to
    medclf's pixel limit too."""
    import struct

    bmp = tmp_path / "bomb.bmp"
    bmp.write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
                    + struct.pack("<IiiHHIIiiII", 40, 20000, 20000, 1, 24, 0, 0, 2835, 2835, 0, 0))
    done = run("--backend", "cpu", str(bmp))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"error {bmp}: image is over the 100,000,000-pixel limit (its header says so)"]


def test_a_folder_without_images_and_a_phone_photo_each_get_their_own_line(tmp_path, blood_cell_images):
    """A mistyped or empty folder said nothing and exited 0; a folder of iPhone photos (HEIC, which OpenCV
    cannot decode) likewise. Each is now one line saying what it holds; the rest are classified."""
    empty, phone = tmp_path / "empty", tmp_path / "phone"
    empty.mkdir()
    phone.mkdir()
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)  # the ISO media header iPhones write
    for name in ("IMG_0001.HEIC", "IMG_0002.HEIC"):
        (phone / name).write_bytes(heic)
    done = run("--backend", "cpu", str(empty), str(phone), str(phone / "IMG_0001.HEIC"), str(blood_cell_images[0]))
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert errors[0].startswith(f"error {empty}: no image in this folder (it is empty; medclf reads .avif .bmp")
    assert errors[1].startswith(f"error {phone}: no image in this folder (it holds 2 .heic files;")
    assert errors[2] == (f"error {phone / 'IMG_0001.HEIC'}: a HEIF/HEIC image (as phones save photos): not "
                         "supported; save it as JPEG or PNG")
    assert len(errors) == 4 and done.stdout.splitlines()[1].startswith(str(blood_cell_images[0]))
    assert errors[3].startswith("1 of 4 inputs classified: ") and errors[3].endswith("; 3 could not be")


@pytest.mark.parametrize("destination, problem", [
    ("/proc/results.csv", "cannot write there"),
    ("{tmp}", "is a folder; give a file name"),
])
def test_a_csv_that_cannot_be_written_is_refused_before_any_work(destination, problem, tmp_path, blood_cell_images):
    """An unwritable --csv ended a finished run in a traceback, the CSV lost."""
    destination = destination.format(tmp=tmp_path)
    done = run("--csv", destination, str(blood_cell_images[0]))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith(f"error: --csv {destination}: {problem}")


@pytest.mark.parametrize("kind", ["an input image", "the worklist (--files-from)", "the model"])
def test_a_csv_that_would_replace_what_the_run_reads_is_refused(kind, blood_cell_images, tmp_path):
    """``--csv`` naming one of the images, the worklist or the model replaced it with the table, exit 0."""
    from medclf.runtime import DEFAULT_MODEL

    image, worklist, model = tmp_path / "cell.jpeg", tmp_path / "worklist.txt", tmp_path / "model.onnx"
    shutil.copy(blood_cell_images[0], image)
    worklist.write_text(f"{blood_cell_images[1]}\n")
    shutil.copy(DEFAULT_MODEL, model)
    before = {path: path.read_bytes() for path in (image, worklist, model)}
    destination = {"an input image": image, "the worklist (--files-from)": worklist, "the model": model}[kind]
    done = run("--model", str(model), "--files-from", str(worklist), str(tmp_path), "--csv", str(destination))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1] == f"error: --csv {destination}: is {kind}, which the table would replace"
    assert {path: path.read_bytes() for path in before} == before


def test_results_that_cannot_be_written_end_the_run_in_one_line_not_a_traceback(blood_cell_images):
    """A full disk under ``--json > results.jsonl`` was an OSError traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", *map(str, blood_cell_images)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == "error: writing the results failed (No space left on device)"


def test_the_csv_is_written_when_the_output_beside_it_fails(blood_cell_images, tmp_path):
    """The CSV was lost, every image classified, whenever the printed output failed: a full disk under the log
    (``> /dev/full``), stderr gone with stdout (``2>&1 | head -2``), a closed stdout (``>&-``), or a file name
    the output's encoding cannot write (``PYTHONIOENCODING=cp1252``, a Latin-1 locale)."""
    named = tmp_path / "Müller_脑.jpeg"
    shutil.copy(blood_cell_images[0], named)
    images = [str(named), *map(str, blood_cell_images[1:4])]
    command = [sys.executable, "-m", "medclf.runtime.cli", "--csv"]

    def rows(destination):
        return [row["path"] for row in csv.DictReader(destination.open(encoding="utf-8"))]

    with open("/dev/full", "w") as full:
        done = subprocess.run([*command, str(tmp_path / "full.csv"), *images], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.splitlines()[-1] == \
        "error: writing the results failed (No space left on device)"
    assert rows(tmp_path / "full.csv") == images
    head = subprocess.run(" ".join(map(shlex.quote, [*command, str(tmp_path / "head.csv"), *images]))
                          + " 2>&1 | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in head.stdout + head.stderr and rows(tmp_path / "head.csv") == images
    closed = subprocess.run(" ".join(map(shlex.quote, [*command, str(tmp_path / "closed.csv"), *images]))
                            + " >&- 2>&-", shell=True, capture_output=True, text=True, timeout=120)
    assert closed.returncode == 0 and rows(tmp_path / "closed.csv") == images
    latin = subprocess.run([*command, str(tmp_path / "cp1252.csv"), *images], capture_output=True, timeout=120,
                           env=os.environ | {"PYTHONIOENCODING": "cp1252"})
    assert latin.returncode == 0 and rows(tmp_path / "cp1252.csv") == images
    assert b"M\xfcller_\\u8111.jpeg" in latin.stdout  # written as the encoding can, the rest escaped


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_end_a_run_in_one_line(blood_cells, tmp_path, signum):
    """systemd, docker stop and Slurm send SIGTERM: it killed the process where it stood, leaving temporary files;
    now the run unwinds (its temporary files removed) and exits with the shell's status for it, 128 + 15.
    Ctrl-C (SIGINT) printed a 41-line traceback: now one line, and 130."""
    import signal

    images = sorted((blood_cells / "TEST").rglob("*.jpeg"))[:600]
    running = subprocess.Popen([sys.executable, "-m", "medclf.runtime.cli", "--json", *map(str, images)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running.stdout.readline()  # classifying by now
    running.send_signal(getattr(signal, signum))
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 128 + getattr(signal, signum) and "Traceback" not in stderr
    if signum == "SIGINT":
        assert stderr.splitlines()[-1].startswith("interrupted: the answers printed above are all there are")


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interrupted_run_still_writes_its_csv_and_marks_the_inputs_it_did_not_reach(blood_cells, tmp_path,
                                                                                      signum):
    """A worklist's answers were all lost to a late Ctrl-C or a service stop: the CSV is written by a run that
    ends. Now it holds the answers given, then one row per input not reached, saying so in its error cell."""
    import signal

    images = sorted((blood_cells / "TEST").rglob("*.jpeg"))[:600]
    destination = tmp_path / "results.csv"
    running = subprocess.Popen([sys.executable, "-m", "medclf.runtime.cli", "--json", "--csv", str(destination),
                                *map(str, images)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running.stdout.readline()  # classifying by now
    running.send_signal(getattr(signal, signum))
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 128 + getattr(signal, signum) and "Traceback" not in stderr
    rows = list(csv.DictReader(destination.open(encoding="utf-8")))
    assert [row["path"] for row in rows] == list(map(str, images))
    answered = [row for row in rows if row["label"]]
    unreached = [row for row in rows if row["error"] == "not classified: the run was interrupted"]
    assert len(answered) >= 1 + stdout.count("\n") and len(answered) + len(unreached) == len(images)
    assert unreached, "the run ended before the signal: nothing tested"
    assert f"{len(answered)} answers written; {len(unreached)} inputs not reached" in stderr


def test_an_image_piped_in_is_classified_as_dash(blood_cell_images, tmp_path):
    """``-`` is standard input, for what pipes an image along (a PACS router, curl, dcmj2pnm); named twice, it is
    the same image. A terminal is no image: refused in its line rather than waited on for ever."""
    image = blood_cell_images[0]
    piped = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", "-", str(image), "-"],
                           input=image.read_bytes(), capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    lines = [json.loads(line) for line in piped.stdout.decode().splitlines()]
    assert [line["path"] for line in lines] == ["-", str(image), "-"]
    assert lines[0] == {**lines[1], "path": "-"} == lines[2]
    import pty

    _, terminal = pty.openpty()
    waiting = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", "-"], stdin=terminal,
                             capture_output=True, text=True, timeout=120)
    assert waiting.returncode == 1 and json.loads(waiting.stdout) == {
        "path": "-", "error": "standard input is a terminal: pipe an image in (medclf-run - < scan.png)"}


def test_the_progress_bar_in_a_terminal_leaves_redirected_answers_where_they_were_sent(blood_cell_images, tmp_path):
    """``medclf-run folder --json > results.jsonl`` at a terminal: the bar draws on stderr, every answer reaches
    the file (rich's bar took stdout over and printed them all on the terminal: the file was empty)."""
    import pty

    from medclf.runtime.cli import PROGRESS_FROM

    _, terminal = pty.openpty()
    names = [str(blood_cell_images[i % len(blood_cell_images)]) for i in range(PROGRESS_FROM + 1)]
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", *names], stderr=terminal,
                          stdout=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 0
    assert [json.loads(line)["path"] for line in done.stdout.splitlines()] == names


def test_a_worklist_names_inputs_one_per_line_from_a_file_or_standard_input(tmp_path, blood_cell_images):
    worklist = tmp_path / "worklist.txt"  # as a lab system writes it: Windows line ends, a blank line, a bad path
    worklist.write_bytes(b"\r\n".join([str(blood_cell_images[0]).encode(), b"", str(tmp_path / "gone.jpeg").encode(),
                                       str(blood_cell_images[1]).encode()]) + b"\r\n")
    done = run("--json", "--files-from", str(worklist), str(blood_cell_images[2]))
    assert done.returncode == 1  # one named input is missing: reported in its place, the others classified
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(blood_cell_images[2]), str(blood_cell_images[0]),
                                                str(tmp_path / "gone.jpeg"), str(blood_cell_images[1])]
    assert "error" in lines[2] and all("label" in lines[i] for i in (0, 1, 3))
    piped = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", "--json", "--files-from", "-"],
                           input=f"{blood_cell_images[3]}\n", capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and json.loads(piped.stdout)["path"] == str(blood_cell_images[3])


@pytest.mark.parametrize("args, reason", [
    (["--files-from", "absent.txt"], "--files-from absent.txt: No such file or directory"),
    (["--files-from", "-", "-"], "standard input can hold the list (--files-from -) or an image (-), not both"),
])
def test_a_worklist_that_cannot_be_read_or_clashes_with_a_piped_image_is_refused_with_exit_2(args, reason):
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and reason in done.stderr


def test_onnxruntime_sends_no_telemetry_and_keeps_no_identifier_in_the_home_folder(tmp_path, blood_cell_images):
    """onnxruntime 1.32 sends usage telemetry from Linux and writes a device id and an event cache under
    ~/.cache/Microsoft; with a read-only home every medclf-run printed its warning in colour on stderr."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "ORT_DISABLE_TELEMETRY"}
    done = subprocess.run([sys.executable, "-m", "medclf.runtime.cli", str(blood_cell_images[0])],
                          capture_output=True, text=True, timeout=120, env=environment | {"HOME": str(home)})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert list(home.rglob("*")) == [], "onnxruntime kept files in the home folder"
