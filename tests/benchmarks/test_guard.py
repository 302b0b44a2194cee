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


def test_a_kind_of_cpu_without_a_baseline_holds_int8_to_its_floor_until_one_is_measured(guard, tmp_path, capsys,
                                                                                         monkeypatch):
    """INT8 at half FP32's speed on a CPU without VNNI passed CI: its ratio was compared with nothing."""
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"batch 32: INT8 / FP32 throughput (CPU) [VNNI]": 1.5}))
    monkeypatch.setattr(guard, "BASELINE", baseline)
    assert guard.main([str(results(tmp_path, 0.5, 1.0, ["avx2"]))]) == 1  # INT8 twice as slow
    assert "≥0.9 floor" in capsys.readouterr().out
    assert guard.main([str(results(tmp_path, 1.2, 1.0, ["avx2"])), "--require-all", "--update"]) == 1  # unmeasured
    assert "not measured (a benchmark skipped or failed): one image" in capsys.readouterr().out
    recorded = json.loads(baseline.read_text())  # the floor gives way to what this kind of CPU measured
    assert recorded["batch 32: INT8 / FP32 throughput (CPU) [no VNNI]"] == 1.2


def test_a_ratio_with_neither_baseline_nor_floor_fails_where_every_ratio_is_required(guard, tmp_path, capsys,
                                                                                     monkeypatch):
    baseline = tmp_path / "baseline.json"
    baseline.write_text("{}")
    monkeypatch.setattr(guard, "BASELINE", baseline)
    benchmarks = [{"name": name, "stats": {"min": seconds}} for name, seconds in
                  (("test_keras_predict_on_batch_one_image", 0.01), ("test_medclf_one_image", 0.002))]
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    assert guard.main([str(path)]) == 0
    assert guard.main([str(path), "--require-all"]) == 1
    assert "no baseline to judge them by on this kind of CPU (no VNNI): one image" in capsys.readouterr().out


def test_the_committed_baseline_judges_int8_on_vnni_cpus_and_floors_hold_it_elsewhere(guard):
    committed = json.loads(guard.BASELINE.read_text())
    for label in guard.BY_CPU:
        assert f"{label} [VNNI]" in committed and label in guard.FLOORS


def test_updating_keeps_the_worst_ratio_seen_so_one_lucky_run_does_not_fail_the_next(guard, tmp_path, monkeypatch):
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"batch 32: INT8 / FP32 throughput (CPU) [VNNI]": 1.6}))
    monkeypatch.setattr(guard, "BASELINE", baseline)
    guard.main([str(results(tmp_path, 2.5, 1.0, ["avx512_vnni"])), "--update"])  # a lucky 2.5
    assert json.loads(baseline.read_text()) == {"batch 32: INT8 / FP32 throughput (CPU) [VNNI]": 1.6}
    guard.main([str(results(tmp_path, 1.5, 1.0, ["avx512_vnni"])), "--update"])
    assert json.loads(baseline.read_text()) == {"batch 32: INT8 / FP32 throughput (CPU) [VNNI]": 1.5}


@pytest.mark.parametrize("text", ["{}", "not json", '{"benchmarks": 3}'])
def test_a_file_that_is_not_benchmark_results_is_one_line(guard, tmp_path, text):
    path = tmp_path / "latest.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match=r"latest.json: (not pytest-benchmark results|cannot read)") as stopped:
        guard.main([str(path)])
    assert "\n" not in str(stopped.value)


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
