"""Outputs are written atomically: a failed write leaves the old file untouched and no litter behind."""

from __future__ import annotations

import json

import pytest

from medclf.runtime.atomic import atomic_write, unwritable, write_json


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


def test_where_outputs_cannot_go_is_said_before_a_run_and_where_they_can_nothing_is_left(tmp_path):
    (tmp_path / "file").write_text("")
    assert unwritable("/proc/heat", folder=True).startswith("cannot write there")
    assert unwritable("/proc/results.csv").startswith("cannot write there")
    assert unwritable(tmp_path / "file", folder=True) == "is a file; give a folder"
    assert unwritable(tmp_path) == "is a folder; give a file name"
    assert unwritable(tmp_path / "new" / "heat", folder=True) is None
    assert unwritable(tmp_path / "out" / "results.csv") is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "heat", "new", "out"]  # folders made, no files


def test_a_name_near_the_255_byte_limit_is_written_with_the_usual_permissions(tmp_path):
    """The temporary sibling's name was the final name plus 12 bytes: past 243 bytes every write failed."""
    import os

    target = tmp_path / ("r" * 250 + ".csv")
    write_json(target, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert json.loads(target.read_text()) == {"a": 1} and target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
