"""The export report as people read it: one row per precision, like the tables used to compare formats."""

from __future__ import annotations

import math
from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text

from .verify import MOST_PROBABLE

COLUMNS = ("format", "MB", "agree", "max|Δp|", "acc", "vs Keras", "ms b1", "img/s b32", "")
BENCHMARK_COLUMNS = ("format", "MB", "accuracy", "agree", "ms/img b1", "img/s b32", "")


def export_table(report: dict) -> Table:
    """``export_report.json`` as a rich table: size, agreement with Keras, accuracy, CPU speed, verdict."""
    table = _table(f"{_folder(report)}: verified against Keras on {report['verified_on']}{_cpu(report)}"
                   f"{_calls(report)}", COLUMNS)
    for name, entry in report["precisions"].items():
        rows = [(name, entry)] + ([(f"{name} TensorRT", entry["tensorrt"])] if "tensorrt" in entry else [])
        for label, item in rows:
            table.add_row(label, _number(item, "size_bytes", "{:.1f}", 1e-6),
                          _agreement(item.get("agreement")), _number(item, "max_abs_diff", "{:.1g}"),
                          *_accuracy(item),
                          _number(item, "latency_ms_batch1", "{:.2f}"),
                          _number(item, "images_per_s_batch32", "{:.0f}"),
                          _verdict(item, counted=item is entry and entry.get("search_counted", False)))
    return table


def _verdict(item: dict, counted: bool) -> Text:
    """ok, or ok* where the file's float layers were chosen on the very images that judged it (see
    :func:`search_lines`), or refused (not published)."""
    if not item["passed"]:
        return Text("refused", style="red")
    return Text("ok*", style="yellow") if counted else Text("ok", style="green")


def search_lines(report: dict) -> list[str]:
    """One line per searched precision: each try's float convolutions, images/s at batch 32 and chance of
    passing verification — or, searched on verification's own images, the agreement counted there, which is
    its verdict — the kept one marked: what ``--float-convs`` would trade."""
    lines = []
    for name, entry in report["precisions"].items():
        tries = [t for t in entry.get("search", []) if "images_per_s_batch32" in t]
        counted = entry.get("search_counted", False)
        judged = "agreement on the verification images" if counted else "chance to pass verification"
        if len(tries) > 1:
            steps = " · ".join(f"{t['float_convs']}: {t['images_per_s_batch32']:,.0f}/s "
                               + (_agreement(t['agreement']) if counted else f"{t['pass_probability']:.0%}")
                               + (" (kept)" if t["float_convs"] == entry["float_convs"] else "") for t in tries)
            lines.append(f"{name} search, by leading convolutions kept float32 (images/s at batch 32, {judged}): "
                         f"{steps}")
        if counted and entry.get("passed"):
            lines.append(f"* {name}: its float layers were chosen on the verification images themselves (too few "
                         "others held out), which is kinder than images the run never used (an INT8 file at 99.6% "
                         "there changed 1.6% of 1,200 new films): --verify-data with such images judges it apart")
    return lines


def computed_lines(report: dict) -> list[str]:
    """How FP16 was computed for verification, beside how onnxruntime computes it on this CPU."""
    entry = report["precisions"].get("fp16", {})
    if "on_this_cpu" not in entry:
        return []
    cpu = entry["on_this_cpu"]
    return [f"fp16 verified with {entry['computed_as']}; onnxruntime on this CPU computes it in float32 between "
            f"casts: agreement {cpu['agreement']:.1%}, max |Δp| {cpu['max_abs_diff']:.1g}"]


def familiarity_lines(report: dict) -> list[str]:
    """Whether the files say how unlike the training images an image is, and what share of the held-out images
    each file flags (FP32: about 0.5% by construction); or why they do not say."""
    familiarity = report.get("familiarity")
    if not familiarity:
        return []
    if not familiarity["added"]:
        return [f"no unfamiliarity output: {familiarity['why']}"]
    flagged = ", ".join(f"{name} {entry['unlike_training']:.1%}" for name, entry in report["precisions"].items()
                        if "unlike_training" in entry)
    among = familiarity.get("threshold_training_images", 0)
    on = f"{familiarity['threshold_on_images']} held-out images" if not among else (
        f"{familiarity['threshold_on_images']} verification images, {among} of them training images (too few held "
        "out; the model knows them better, so it sits tighter and flags more ordinary images than 1 in 200)")
    lines = [f"unfamiliarity output (the runtime warns above 1): fitted on {familiarity['fitted_on_images']} "
             f"training images, threshold on {on}; of the verification images, flagged: {flagged}"]
    for name, entry in report["precisions"].items():  # FP16 / INT8: set again on their own features
        moved = {level: weight for level, weight in zip(familiarity["levels"], entry.get("familiarity_weights", []))
                 if not 0.5 <= weight <= 2}
        if moved:
            weights = ", ".join(f"{level} {weight:.2f}" for level, weight in moved.items())
            lines.append(f"{name}: its features sit apart from FP32's; set again on them, its depths weigh {weights} "
                         "(below 1, it warns from there only on images farther off than FP32 would)")
    return lines


def _calls(report: dict) -> str:
    """What "agree" counts, where it is not the most probable class: a binary model's threshold calls."""
    calls = report.get("calls", MOST_PROBABLE)
    return "" if calls == MOST_PROBABLE else f"; agree = same call ({calls})"


def _cpu(report: dict) -> str:
    """Where the speeds and INT8's agreement hold (see ``medclf.runtime.cpu``)."""
    cpu = report.get("cpu")
    if not cpu:
        return ""
    kernels = {True: "int8 dot product (VNNI)", False: "no int8 dot product (VNNI)"}.get(cpu["int8_dot_product"])
    return f", on {cpu['name']}" + (f", {kernels}" if kernels else "")


def _folder(report: dict) -> str:
    files = [entry["file"] for entry in report["precisions"].values()]
    return str(Path(files[0]).parent) if files else report["model"]


def _accuracy(entry: dict) -> tuple[str, str]:
    """Accuracy on the verification images, and its difference from the Keras model's, in points."""
    if entry.get("accuracy") is None:
        return "—", "—"
    return f"{entry['accuracy']:.1%}", f"{(entry['accuracy'] - entry['reference_accuracy']) * 100:+.1f} pt"


def _agreement(share: float | None) -> str:
    """A share of calls kept, to a tenth of a percent rounded down: 98.99% reads 98.9% beside a 99% tolerance,
    not a "99.0%" that was refused."""
    return "—" if share is None else f"{math.floor(share * 1000 + 1e-9) / 10:.1f}%"


def _number(entry: dict, key: str, form: str, scale: float = 1.0) -> str:
    """The value formatted, or a dash where it was not measured."""
    return "—" if entry.get(key) is None else form.format(entry[key] * scale)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """Numbers right-aligned, the first (format) and last (verdict) columns left-aligned."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i in (0, len(columns) - 1) else "right")
    return table


def benchmark_table(result: dict) -> Table:
    """``medclf benchmark``'s rows: format, size, accuracy, agreement with Keras (or, for an exported file and
    its siblings, with the file's calls: its ``agreement_with``), ms per image, images/s."""
    title = f"{result['model']}: {result['verified_on']}"
    if "accuracy_on" in result:
        title += f"; accuracy on {result['accuracy_on']}"
    if "agreement_with" in result:
        title += f"; agree = same call as {result['agreement_with']}"
    if not result.get("familiarity", {"added": True})["added"]:  # the files timed are not those export writes
        title += f"; timed without the unfamiliarity output export adds ({result['familiarity']['why']})"
    table = _table(title, BENCHMARK_COLUMNS)
    for row in result["rows"]:
        table.add_row(row["format"], _number(row, "size_mb", "{:.1f}"), _number(row, "accuracy", "{:.1%}"),
                      _agreement(row.get("agreement")), _number(row, "ms_per_image", "{:.2f}"),
                      _number(row, "images_per_s", "{:.0f}"), "" if row["passed"] else Text("refused", style="red"))
    return table
