"""What a model file is, for a person auditing a result or a log that must name the model behind it.

``medclf-run --describe`` answers from the file alone: its hash (the identity to record beside results), the
classes and how one is called, the input it expects, its precision and outputs, and the model card's record of
where it came from — the training run, its validation and test scores, the export — so a file found on a
workstation can be told apart from its siblings without the run directory that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .modelcard import ModelCard


def describe(path: str | os.PathLike[str], card: ModelCard) -> dict[str, Any]:
    """The file's identity and its card, as JSON-ready data (``medclf-run --describe --json``)."""
    return {"file": str(path), "size_bytes": os.path.getsize(path), "sha256": file_sha256(path),
            "labels": list(card.labels),
            "decision": None if card.decision is None else json.loads(card.decision.to_json()),
            "preprocess": json.loads(card.preprocess.to_json()), "precision": card.precision, "outputs": card.outputs,
            "source": card.source, "metrics": card.metrics}


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def described_lines(about: dict[str, Any]) -> list[str]:
    """``describe``'s data as lines a person reads: 'calls: EOSINOPHIL, LYMPHOCYTE, ... (the most probable)'."""
    source, metrics, preprocess = about["source"], about["metrics"], about["preprocess"]
    lines = [f"{about['file']}: {about['size_bytes'] / 1e6:.1f} MB, sha256 {about['sha256']}",
             f"calls: {_calls(about['labels'], about['decision'])}",
             f"input: {_input(preprocess)}",
             f"precision: {about['precision']}{_verified_on(metrics)}",
             f"outputs: probabilities{''.join(f', {name}' for name in about['outputs'])}"]
    if (training := metrics.get("training")) and "members" in training:  # medclf ensemble's average
        lines.append(f"trained: an average of {len(training['members'])} runs ({', '.join(training['members'])})")
    elif training:
        lines.append(f"trained: {training.get('architecture', '?')} on {training.get('train_images', 0):,} images"
                     f" of {training.get('data') or '?'} in {training.get('seconds', 0):,.0f} s")
    site = metrics.get("site")
    before = " (at the training site, before the site's calibration)" if site else ""
    lines += [f"{split}{before}: {_scores(metrics[split])}" for split in ("validation", "test") if split in metrics]
    if site:
        lines.append(f"calibrated at a site: {_site(site)}")
    if source:
        made = ", ".join(f"{name} {source[key]}" for key, name in (
            ("medclf_version", "medclf"), ("tensorflow_version", "TensorFlow"), ("tf2onnx_version", "tf2onnx"))
            if key in source)
        keras = f" from {source.get('keras_model', '?')} (sha256 {str(source.get('keras_sha256', '?'))[:16]}…)"
        lines.append(f"exported: {source.get('exported_at', '?')}{keras}{', ' + made if made else ''}")
    return lines


def _calls(labels: list[str], decision: dict | None) -> str:
    if decision is None:
        return f"{', '.join(labels)} (the most probable)"
    return (f"{', '.join(labels)}: {decision['positive_class']} when its probability is at least "
            f"{decision['threshold']:.3g} ({decision['rule']})")


# runtime.preprocess.stain_centre in words, so that code reading the card alone can place the window (a third
# party's centred window called 91 of 200 cells as medclf-run does)
STAIN_RULE = ("centred on the stained nucleus (the median row and column of the pixels whose blue exceeds green by "
              "more than 50 and whose red is under 200; the image's centre where fewer than 20 are)")


def _input(preprocess: dict) -> str:
    colour = "RGB" if preprocess["color"] == "rgb" else "grey"
    fraction = preprocess.get("crop_fraction", 1.0)
    window = "the whole image" if fraction >= 1.0 else f"a square {fraction:g} of the shorter side, " + (
        STAIN_RULE if preprocess.get("crop") == "stain" else "at the centre")
    clahe = ", contrast equalised (CLAHE)" if preprocess.get("clahe") else ""
    return (f"{preprocess['height']}x{preprocess['width']} {colour} uint8: {_shrinking(preprocess)}{window}, "
            f"{preprocess['interpolation']} resize{clahe}")


def _shrinking(preprocess: dict) -> str:
    """The step before the window, in words a reimplementation can follow (skipped, probabilities moved 0.5)."""
    if not preprocess.get("shrink_jpeg"):
        return ""
    if preprocess.get("shrink_all"):
        return ("shrunk 8, 4 or 2 times, the most that leaves the window's side at least the input's (a JPEG "
                "decoded at that scale, other images averaged over blocks); ")
    return "a JPEG decoded at 1/8, 1/4 or 1/2 scale, the least that leaves the window's side at least the input's; "


def _verified_on(metrics: dict) -> str:
    cpu = metrics.get("int8_verified_on")
    if not cpu:
        return ""
    dot = "with" if cpu.get("int8_dot_product") else "without"
    return f" (verified on {cpu.get('name', '?')}, {dot} int8 dot products)"


def _site(site: dict) -> str:
    """'site_fit, 308 images: temperature 0.52, bias NORMAL +0.00 PNEUMONIA -2.14; estimated accuracy 0.915 (as
    the model stood 0.899)' — what a calibrated copy's scores at the training site no longer describe."""
    scaling = [f"temperature {site['temperature']:.3g}"] if site.get("temperature") is not None else []
    if site.get("bias"):
        scaling.append("bias " + " ".join(f"{name} {value:+.2f}" for name, value in site["bias"].items()))
    line = f"{site.get('data', '?')}, {site.get('images', '?')} images: {', '.join(scaling) or 'threshold only'}"
    estimate, before = site.get("estimate") or {}, site.get("before") or {}
    if isinstance(estimate.get("accuracy"), dict) and "accuracy" in before:
        line += (f"; estimated accuracy there {estimate['accuracy']['mean']:.3f} (as the model stood "
                 f"{before['accuracy']:.3f})")
    return line


def _scores(split: dict) -> str:
    auc = split.get("roc_auc_macro")
    return (f"accuracy {split.get('accuracy', float('nan')):.3f}"
            + (f", ROC AUC {auc:.3f}" if auc is not None else "") + f" on {split.get('images', 0):,} images")
