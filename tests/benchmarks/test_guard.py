"""The CI speed guard: ratios from one pytest-benchmark run, compared with the committed baseline."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

GUARD = Path(__file__).parents[2] / "benchmarks" / "guard.py"


@pytest.fixture(scope="module")
def guard():
    spec = importlib.util.spec_from_file_location("guard", GUARD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results(tmp_path: Path, fp32_s: float, int8_s: float, flags: list[str]) -> Path:
    """FP32 and INT8 timed in turn by one benchmark, as benchmarks/test_precision.py does, each one's fastest
    call in its extra_info (the benchmark's own stats time the pair)."""
    benchmarks = [{"name": "test_int8_and_fp32_in_turn", "stats": {"min": fp32_s + int8_s},
                   "extra_info": {"fp32 fastest": fp32_s, "int8 fastest": int8_s}}]
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"machine_info": {"cpu": {"flags": flags}}, "benchmarks": benchmarks}))
    return path


def test_int8_speedup_is_judged_against_the_baseline_of_the_same_kind_of_cpu(guard, tmp_path, capsys, monkeypatch):
    with_vnni, without = 2.0, 1.0
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"batch 32: INT8 / FP32 throughput (CPU) [VNNI]": with_vnni,
                                    "batch 32: INT8 / FP32 throughput (CPU) [no VNNI]": without}))
    monkeypatch.setattr(guard, "BASELINE", baseline)
    ratio = (with_vnni * (1 - guard.TOLERANCE) + without) / 2  # a regression with VNNI, fine without it
    assert guard.main([str(results(tmp_path, ratio, 1.0, ["avx2", "avx512_vnni"]))]) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert guard.main([str(results(tmp_path, ratio, 1.0, ["avx2"]))]) == 0


def test_a_kind_of_cpu_without_a_baseline_is_shown_and_not_failed(guard, tmp_path, capsys, monkeypatch):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"batch 32: INT8 / FP32 throughput (CPU) [VNNI]": 1.5}))
    monkeypatch.setattr(guard, "BASELINE", baseline)
    assert guard.main([str(results(tmp_path, 0.5, 1.0, ["avx2"]))]) == 0
    assert "—" in capsys.readouterr().out


def test_ratios_are_taken_from_the_fastest_rounds_and_missing_ones_are_shown(guard, tmp_path, capsys):
    path = results(tmp_path, 0.1, 0.05, [])
    assert guard.ratios(json.loads(path.read_text())) == {"batch 32: INT8 / FP32 throughput (CPU)": 2.0}
    assert guard.main([str(path)]) == 0  # without ../shared the benchmarks skip, and nothing can regress
    assert "not measured" in capsys.readouterr().out


def test_with_require_all_a_ratio_not_measured_fails(guard, tmp_path, capsys):
    """CI with the data beside it: a benchmark that skipped or broke must not read as "no regression"."""
    assert guard.main([str(results(tmp_path, 0.1, 0.05, [])), "--require-all"]) == 1
    assert "not measured (a benchmark skipped or failed): one image" in capsys.readouterr().out


@pytest.mark.parametrize("broken", [float("nan"), 0.0])
def test_a_time_that_is_no_time_is_not_measured_rather_than_a_ratio_that_never_regresses(guard, tmp_path, capsys,
                                                                                        broken):
    """NaN compares False with everything: a NaN ratio read "no regression" even under --require-all."""
    path = results(tmp_path, 0.1, broken, [])
    assert guard.ratios(json.loads(path.read_text())) == {}
    assert guard.main([str(path), "--require-all"]) == 1
