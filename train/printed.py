"""What the ``medclf`` commands print, formatted in one place: metrics lines and per-class tables, a site's
calibration, the agreement of an exported file with its FP32 one, and error lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.text import Text
from rich.table import Column, Table

if TYPE_CHECKING:
    from medclf.runtime.preprocess import Preprocess

    from .architectures import Architecture
    from .fit import FitConfig
    from .site_familiarity import SiteFamiliarity

# Paths and metrics stay on one line, in terminals and logs alike; nothing printed is read as markup or emoji codes:
# class names and paths are the user's ("mass [benign]" printed as "mass ", a folder "x [/y]" ended evaluate in a
# traceback, "a:b:0.9" came out with an emoji)
console = Console(soft_wrap=True, markup=False, emoji=False)
errors = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)  # one line per error, never wrapped


def error(text: str) -> None:
    """One red 'error:' line on stderr; the text is printed as is (a path like scan[1].png is not markup)."""
    errors.print(Text.assemble(("error", "red"), f": {text}"), highlight=False)


def print_unreadable(unreadable: dict[str, int]) -> None:
    """One line at the end for files left out along the way (each was named as it was met, maybe far above)."""
    if total := sum(unreadable.values()):
        where = ", ".join(f"{n} {split}" for split, n in unreadable.items() if n)
        console.print(f"{total} file{'s' if total > 1 else ''} could not be read and {'were' if total > 1 else 'was'} "
                      f"left out ({where}): each is named above")


def training_plan(architecture: Architecture, preprocess: Preprocess, config: FitConfig, pretrained: bool) -> str:
    """What a run is about to train, said before minutes of decoding and fitting — what a run with no flags
    chose is otherwise only in metrics.json: 'training MobileNetV2 from ImageNet weights at 224x224 px: a new
    head on its frozen features for 10 epochs, then the layers after block_12_add fine-tuned for up to 30 more;
    time budget 28 min'."""
    transfer = architecture.frozen_until is not None
    weights = "ImageNet weights" if transfer and pretrained else "random weights"
    if not transfer:
        stages = f"up to {_epochs(config.epochs)}"
    elif architecture.frozen_until == "pool":
        stages = f"a new head on their frozen features for up to {_epochs(config.head_epochs + config.epochs)}"
    else:
        stages = (f"a new head on its frozen features for {_epochs(config.head_epochs)}, then the layers after "
                  f"{architecture.frozen_until} fine-tuned for up to {config.epochs} more")
    budget = f"; time budget {config.time_budget:g} min" if config.time_budget else ""
    return (f"training {architecture.summary} from {weights} at {preprocess.height}x{preprocess.width} px: "
            f"{stages}{budget}")


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def final_weights_line(wise: dict) -> str:
    """How the fine-tuned weights were mixed with the head-only (linear-probe) ones at the end — the one choice
    a run makes after fitting: 'final weights: 0.5 fine-tuned + 0.5 head-only (WiSE), the most robust mix
    validation accepts (ROC AUC at 0.5, 0.75, 1.0 fine-tuned: 0.998, 0.998, 0.999)'."""
    mix = wise["mix"]
    line = "final weights: " + (f"{mix:g} fine-tuned + {1 - mix:g} head-only (WiSE)" if mix < 1 else "fine-tuned")
    scores = wise.get("validation_auc") or {}
    if not scores:  # a mix given (--wise, or a preset's): nothing was compared
        return line + " as asked"
    aucs = ", ".join("—" if auc is None else f"{auc:.3f}" for auc in scores.values())
    return (f"{line}, the most robust mix validation accepts (ROC AUC at {', '.join(scores)} fine-tuned: "
            f"{aucs})")


def unlike_line(unlike: dict, name: str) -> str:
    """'evaluation: model.onnx says 1 of 624 images (0.2%) are unlike its training images (about 0.5% of images
    like them are), the farthest: ...'."""
    reference = f"the images of {unlike['reference']}" if unlike.get("reference") else "its training images"
    line = (f"evaluation: {name} says {unlike['count']} of {unlike['images']} images ({unlike['share']:.1%}) are "
            f"unlike {reference} (of images like them, about 0.5% are)")
    if unlike["share"] > 0.05:
        line += "; these scores describe a mix of kinds of images, not the model on the kind it is for"
    return line + (f"; the farthest: {', '.join(unlike['examples'])}" if unlike["examples"] else "")


def agreement_line(fp32: dict, name: str, accuracy: float) -> str:
    """'evaluation: model.int8.onnx makes the same calls as model.onnx on 97.3% of these images (17 of 624 changed:
    NORMAL → PNEUMONIA 17); accuracy 0.822 here, model.onnx's 0.843 — below the 99.0% ...'."""
    reference = Path(fp32["file"]).name
    moves = ", ".join(f"{move} {count}" for move, count in fp32["moves"].items())
    line = (f"evaluation: {name} makes the same calls as {reference} on {fp32['agreement']:.1%} of these images "
            f"({fp32['changed']} of {fp32['images']} changed{': ' + moves if moves else ''}); accuracy "
            f"{accuracy:.3f} here, {reference}'s {fp32['fp32_accuracy']:.3f}")
    if fp32["within_tolerance"]:
        return line
    return f"{line} — below the {fp32['tolerance']:.1%} its export was verified to on the training site's images"


def familiarity_line(familiarity: SiteFamiliarity) -> str:
    """'unfamiliarity: 394 of 498 site images (79.1%) lie beyond 1, unlike the training images (...)' and, if
    the site took its images as the reference, that; else, where many are beyond, the option that would."""
    reference = "the training images (of the training site's held-out images" if familiarity.reference is None \
        else f"the images of {familiarity.reference}, where this file's was set (of those"
    line = (f"unfamiliarity: {familiarity.beyond} of {familiarity.images} site images "
            f"({familiarity.beyond / familiarity.images:.1%}) lie beyond 1, unlike {reference}, "
            f"{1 - familiarity.quantile:.1%})")
    if familiarity.weights is not None:
        return line + ("; the copy's is set again on these images, depth by depth, so that they lie beyond 1 as "
                       "rarely: its warnings mean unlike this site's images")
    if familiarity.beyond > 0.05 * familiarity.images:
        line += ("; the model will warn on these images — if they are the kind it is for here (another scanner, "
                 "stain or exposure), --familiarity-from-site takes them as the reference")
    return line


def percentages(shares: dict[str, float]) -> str:
    """{'NORMAL': 0.9, 'PNEUMONIA': 0.1} → 'NORMAL 90.0%, PNEUMONIA 10.0%'."""
    return ", ".join(f"{name} {share:.1%}" for name, share in shares.items())


def site_metrics(summary: dict) -> str:
    """'threshold 0.622, accuracy 0.899, ..., calibration error 0.033, log loss 0.218', with ± spreads for an
    estimate, and the model as it stands on the estimate's halves beside them."""
    def number(value: float | dict) -> str:
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if isinstance(value, dict) else f"{value:.3f}"

    shown = [f"threshold {summary['threshold']:.3g}"] if summary.get("threshold") is not None else []
    shown += [f"{key} {number(summary[key])}" for key in ("accuracy", "sensitivity", "specificity") if key in summary]
    for key, name in (("expected_calibration_error", "calibration error"), ("log_loss", "log loss")):
        shown.append(f"{name} {number(summary[key])}")
        if f"{key}_before" in summary:
            shown[-1] += f" (as the model stands on the same halves: {number(summary[f'{key}_before'])})"
    return ", ".join(shown)


def print_metrics(metrics: dict) -> None:
    """One line per split; for three classes or more, the last split's per-class table beneath."""
    splits = [split for split in ("validation", "test", "evaluation") if split in metrics]
    for split in splits:
        m = metrics[split]
        extra = "".join(f", {k} {m[k]:.3f}" for k in ("sensitivity", "specificity") if m.get(k) is not None)
        extra += operating_point(m)
        auc = f", ROC AUC {m['roc_auc_macro']:.3f}" if m.get("roc_auc_macro") is not None else ""
        console.print(f"{split}: accuracy {m['accuracy']:.3f}{auc}{extra}, "
                      f"calibration error {m['expected_calibration_error']:.3f} on {m['images']} images")
        if m.get("confidence_intervals"):
            console.print(f"{split}, {intervals_line(m['confidence_intervals'], m.get('per_source'))}")
        if "per_source" in m:
            source = m["per_source"]
            right = ", ".join(f"{name} {c['right']}/{c['sources']}" for name, c in source["per_class"].items())
            kind = source.get("kind", "sources")  # patients, or source images (copies of one cell)
            low, high = source.get("accuracy_interval") or (None, None)
            interval = f" (95% CI {low:.3f}-{high:.3f})" if low is not None else ""
            console.print(f"{split}, one vote per {kind[:-1]}: accuracy {source['accuracy']:.3f}{interval} over "
                          f"{source['sources']} {kind} ({right})")
        if "at_prevalence" in m:
            console.print(f"{split}, {prevalence_line(m['at_prevalence'], m.get('positive_class'))}")
    if splits and len(metrics[splits[-1]]["per_class"]) > 2:
        last = metrics[splits[-1]]
        intervals = (last.get("confidence_intervals") or {}).get("per_class")
        table = per_class_table(last["per_class"], splits[-1], intervals)
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        # a log or a pipe has no width to keep to: long class names stay on one line there
        out = console if console.is_terminal else Console(file=console.file, width=max(console.width, natural),
                                                          markup=False, emoji=False)
        out.print(table)


def intervals_line(intervals: dict, per_source: dict | None) -> str:
    """'95% confidence intervals (1000 resamples of its 100 sources): accuracy 0.749-0.964, ROC AUC ...'."""
    from .intervals import resampled

    shown = [f"{name} {intervals[key][0]:.3f}-{intervals[key][1]:.3f}"
             for key, name in (("accuracy", "accuracy"), ("roc_auc_macro", "ROC AUC"), ("sensitivity", "sensitivity"),
                               ("specificity", "specificity")) if intervals.get(key)]
    return (f"{intervals['level']:.0%} confidence intervals ({intervals['resamples']} resamples of its "
            f"{resampled(intervals, per_source)}): " + ", ".join(shown))


def prevalence_line(site: dict, positive: str | None) -> str:
    """'at the stated prevalence (NORMAL 90.0%, PNEUMONIA 10.0%): accuracy ..., a PNEUMONIA call right 0.412
    of the time (PPV), a NORMAL call 0.993 (NPV), ...'; per class for more than two."""
    precision = site["precision"]
    if positive is not None:
        negative = next(name for name in precision if name != positive)
        right = (f"a {positive} call right {precision[positive]:.3f} of the time (PPV), a {negative} call "
                 f"{precision[negative]:.3f} (NPV)")
    else:
        right = "calls right: " + ", ".join(f"{name} {value:.3f}" for name, value in precision.items())
    return (f"at the stated prevalence ({percentages(site['shares'])}): accuracy {site['accuracy']:.3f}, {right}, "
            f"calibration error {site['expected_calibration_error']:.3f}, log loss {site['log_loss']:.3f}")


def per_class_table(per_class: dict, split: str, intervals: dict | None = None) -> Table:
    """Each class against the others: what a clinician reads of a multi-class result, sensitivity and
    specificity with their 95% confidence intervals where the split has them."""
    table = Table(Column("class", overflow="fold"), "images", "sensitivity", "specificity", "precision", "F1",
                  "ROC AUC", title=f"{split}, per class" + (" (95% confidence intervals)" if intervals else ""),
                  box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False, show_edge=False)
    for name, c in per_class.items():
        bounds = (intervals or {}).get(name) or {}
        numbers = [c["recall"], c.get("specificity"), c["precision"], c["f1-score"], c.get("roc_auc")]
        shown = ["—" if x is None else f"{x:.3f}" for x in numbers]
        for column, key in ((0, "sensitivity"), (1, "specificity")):
            if bounds.get(key) and numbers[column] is not None:
                shown[column] += f" ({bounds[key][0]:.3f}-{bounds[key][1]:.3f})"
        table.add_row(name, f"{c['support']:.0f}", *shown)
    return table


def operating_point(m: dict) -> str:
    """" (threshold T)" for a binary split, with the accuracy of the model's own call when T is not 0.5."""
    if m.get("threshold") is None:
        return ""
    if m["threshold"] == 0.5 or m.get("accuracy_at_argmax") is None:
        return f" (threshold {m['threshold']:.3g})"
    return f" (threshold {m['threshold']:.3g}; accuracy {m['accuracy_at_argmax']:.3f} at 0.5)"
