"""Outputs are written atomically: a failed write leaves the old file untouched and no litter behind."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from medclf.runtime.atomic import (atomic_write, replace_durably, unwritable, write_image, write_json,
                                   write_text, written_together)


def test_write_json_replaces_the_file_whole(tmp_path):
    target = tmp_path / "deep" / "report.json"
    write_json(target, {"a": 1})
    write_json(target, {"b": 2})
    assert json.loads(target.read_text()) == {"b": 2}
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_files_written_together_replace_the_old_set_only_when_all_are_made(tmp_path, monkeypatch):
    """A record and its pictures: stopped midway, the old set stays whole; done, the record comes in last."""
    write_text(tmp_path / "metrics.json", "old record")
    write_text(tmp_path / "roc.png", "old picture")
    with pytest.raises(KeyboardInterrupt):
        with written_together(tmp_path, last="metrics.json") as staged:
            write_text(staged / "roc.png", "new picture")
            raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"metrics.json": "old record",
                                                                   "roc.png": "old picture"}
    moved, real = [], os.replace
    with written_together(tmp_path, last="metrics.json") as staged:
        write_text(staged / "metrics.json", "new record")
        write_text(staged / "roc.png", "new picture")
        monkeypatch.setattr(os, "replace", lambda written, path: moved.append(Path(path).name) or real(written, path))
    assert moved == ["roc.png", "metrics.json"]
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"metrics.json": "new record",
                                                                   "roc.png": "new picture"}


def test_where_outputs_cannot_go_is_said_before_a_run_and_where_they_can_nothing_is_left(tmp_path):
    (tmp_path / "file").write_text("")
    assert unwritable("/proc/heat", folder=True).startswith("cannot write there")
    assert unwritable("/proc/results.csv").startswith("cannot write there")
    assert unwritable(tmp_path / "file", folder=True) == "is a file; give a folder"
    assert unwritable(tmp_path) == "is a folder; give a file name"
    assert unwritable(tmp_path / "new" / "heat", folder=True) is None
    assert unwritable(tmp_path / "out" / "results.csv") is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file"]  # nothing made: a refused run leaves no folder
    assert unwritable(tmp_path / "file" / "repo", folder=True) == f"cannot write there ({tmp_path / 'file'} is a file)"


def test_a_name_near_the_255_byte_limit_is_written_with_the_usual_permissions(tmp_path):
    """The temporary sibling's name was the final name plus 12 bytes: past 243 bytes every write failed."""
    import os

    target = tmp_path / ("r" * 250 + ".csv")
    write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert json.loads(target.read_text()) == {"a": 1} and target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_link_is_written_through_and_a_private_file_stays_private(tmp_path):
    """`--csv results.csv` where results.csv links into a shared folder, or was made readable by its owner alone."""
    kept = tmp_path / "shared" / "results.csv"
    kept.parent.mkdir()
    kept.write_text("old")
    kept.chmod(0o600)
    link = tmp_path / "results.csv"
    link.symlink_to(kept)
    write_text(link, "new")
    assert link.is_symlink() and kept.read_text() == "new"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_what_is_no_regular_file_is_written_in_place_not_replaced(tmp_path):
    """`--csv /dev/stdout` (as root, the rename replaced /dev/stdout itself); here a pipe, read as it is written."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_text()), daemon=True)
    reader.start()
    assert unwritable(pipe) is None
    write_text(pipe, "path,label\n")
    reader.join(timeout=10)
    assert read == ["path,label\n"] and stat.S_ISFIFO(pipe.stat().st_mode)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this system")
def test_a_regular_file_under_dev_is_replaced_like_any_other(tmp_path):
    """/dev/shm holds ordinary files: taken for a stream, a report written twice there was two reports."""
    path = f"/dev/shm/medclf-test-{os.getpid()}.json"
    try:
        write_json(path, {"run": 1})
        write_json(path, {"run": 2})
        assert json.loads(open(path).read()) == {"run": 2}
    finally:
        os.unlink(path)


def test_a_report_reaches_the_disk_before_and_after_its_rename_and_bulk_images_are_not_held_up(tmp_path,
                                                                                                  monkeypatch):
    """A power cut after the rename must not leave an empty file under the final name: the bytes are synced, then
    the folder holding the new name; a heatmap or augmented copy (a rerun makes it again) skips the ~3 ms."""
    import numpy as np

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
                        or real_fsync(descriptor))
    write_json(tmp_path / "report.json", {"ok": True})
    assert len(synced) == 2 and synced[0].endswith(".tmp") and Path(synced[0]).parent == tmp_path  # the bytes
    assert synced[1] == str(tmp_path)  # then the name
    synced.clear()
    write_image(tmp_path / "heat.png", np.zeros((4, 4, 3), np.uint8))
    assert synced == [] and (tmp_path / "heat.png").stat().st_size > 0
    (tmp_path / "written.onnx").write_bytes(b"model")  # as onnx or Keras write their own files
    replace_durably(tmp_path / "written.onnx", tmp_path / "model.onnx")
    assert synced == [str(tmp_path / "written.onnx"), str(tmp_path)]
    assert (tmp_path / "model.onnx").read_bytes() == b"model"


def test_a_link_into_a_missing_folder_is_refused_before_a_run_and_its_folders_are_never_made(tmp_path):
    """A results link into an unmounted share made the share's folders on the local disk."""
    link = tmp_path / "results.csv"
    link.symlink_to(tmp_path / "share" / "medclf" / "results.csv")
    assert unwritable(link) == f"is a link to {tmp_path}/share/medclf/results.csv, whose folder does not exist"
    with pytest.raises(FileNotFoundError):
        write_text(link, "path,label\n")
    assert not (tmp_path / "share").exists()


def test_dev_stdout_redirected_to_a_file_is_written_in_turn_with_what_the_process_prints(tmp_path):
    """Opened again by name it got an offset of its own at 0: what the process printed next overwrote it
    (medclf benchmark --json-out /dev/stdout > file printed its table over the JSON)."""
    import subprocess
    import sys

    code = ("from medclf.runtime.atomic import write_json\nprint('table above')\nwrite_json('/dev/stdout', {'a': 1})\n"
            "print('table below')")
    with open(tmp_path / "out.txt", "w") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=60)
    assert (tmp_path / "out.txt").read_text() == 'table above\n{\n  "a": 1\n}\ntable below\n'


def test_a_link_into_a_folder_that_cannot_be_written_is_refused_before_a_run(tmp_path):
    link = tmp_path / "results.csv"
    link.symlink_to("/proc/medclf-results.csv")
    assert unwritable(link).startswith("cannot write there")


def test_a_write_protected_results_file_is_refused_before_a_run_not_replaced(tmp_path):
    """A site that locks an accepted run's results (chmod 444) had them replaced without a word by the next run
    naming the same --csv: the rename a safe write ends with needs only the folder's permission. As root, where
    the shell's > writes it too, it is written."""
    import subprocess
    import sys

    accepted = tmp_path / "final.csv"
    accepted.write_text("path,label\n")
    accepted.chmod(0o444)
    script = f"from medclf.runtime.atomic import unwritable; print(unwritable({str(accepted)!r}))"
    command = ["unshare", "--user", "--map-user=12345", sys.executable, "-c", script]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("needs unshare to run as a user without root's permissions")
    if done.returncode != 0:
        pytest.skip(f"needs user namespaces to run as a user without root's permissions ({done.stderr.strip()})")
    assert done.stdout.strip() == "is write-protected (a file kept as it is, as the shell's > would refuse it); " \
                                  "name another"
