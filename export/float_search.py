"""How many leading convolutions an FP16 or INT8 file keeps float32: the fewest that verification should pass.

Each step is a candidate file (:mod:`.candidates`) judged on the search's own held-out images (:mod:`.held_out`)
by the answers it is expected to change; verification, on other images, decides afterwards.
"""

from __future__ import annotations

from pathlib import Path

from scipy.stats import binom

from medclf.runtime.modelcard import ModelCard

from .candidates import Converters, derive, judged_probabilities
from .held_out import Search
from .speed import speeds
from .verify import TOLERANCES, expected_flips

# FP16 and INT8: how many leading convolutions to keep float32, tried in turn (see choose_float_layers); 15 is
# MobileNetV2's first five blocks, about a third of its work. FP16 tries none: with float16 activations, as GPUs
# compute it and verification judges it, a float32 prefix does not pay — activations are rounded at its end
# instead, as damaging as the roundings it saves. Changed calls on all held-out images with float16 activations,
# for 0 / 4 / 8 / 15 leading convolutions float32 (and every node up to them): the default-trained 224-px blood
# model 0 / 2 / 2 / 2 of 1,376, the demo's 5 / 4 / 3 / 4 of 1,376 (30: 4); the 224-px chest model (its
# convolutions alone float32) 0 / 1 / 1 of 782. ``--float-convs fp16=N`` still keeps N.
FP16_FLOAT_STEPS = (0,)
INT8_FLOAT_STEPS = (1, 3, 6, 9, 12, 15)
PASS_CONFIDENCE = 0.9  # a search step is kept when verification should pass it this often (see pass_probability)
# ... judged on twice the flips expected_flips estimates: verification has counted up to 2.7x more
# (see choose_float_layers)
ESTIMATE_MARGIN = 2.0


def choose_float_layers(precision: str, fp32: Path, card: ModelCard, converters: Converters,
                        search: Search, asked: int | None = None) -> tuple[Path, dict]:
    """The candidate with the fewest leading convolutions kept float32 (``INT8_FLOAT_STEPS``; FP16 has a
    single step, ``FP16_FLOAT_STEPS``) that verification is likely to pass (:func:`pass_probability` ≥
    ``PASS_CONFIDENCE``) given the answers it is expected to change (:func:`expected_flips`, doubled) — or, if
    none is, the best of them (:func:`chosen_try`), which verification then judges. The tries go into the report,
    with the agreement counted on the search images for the record.

    Why an estimate rather than counting flips on the search images: FP16 changes too few answers to count on a
    few hundred images, and INT8's counts move in blocks where held-out images are copies of a few cells. On
    the packaged blood-cell model, INT8's counted agreement on 256 search images was 98.0%, 97.7%, 97.3%,
    96.9%, 97.7%, 97.3% for 1, 3, 6, 9, 12, 15 float convolutions — falling as verification's 1,024 other
    images rose 98.7% → 99.6% — while the estimate rose with them (99.1% → 99.4%).

    Why twice the estimate (``ESTIMATE_MARGIN``): it reads low, most where few layers are float. INT8 with 1, 3,
    6, 9, 12, 15 float convolutions, estimated vs counted on verification's 1,024 images — the blood model
    packaged until 2026-12-06: 0.70/1.07%, 0.54/0.98%, 0.45/1.07%, 0.47/0.29%, 0.36/0.10%, 0.36/0.39%; one
    fine-tuned from block 6: 0.61/1.66%, 0.47/1.27%, 0.36/0.78%, 0.42/0.78%, 0.22/0.78%, 0.28/1.27%; the 160-px
    one 1.41/2.25% ... 0.63/0.39%. Taken at its word, the search kept 3 float for the first (99.0%, passed by
    one flip) and 1 for the second (98.3%, refused); at twice, 12 (99.9%) and 12 (99.2%), and 15 for the third (99.6%).

    Where the search images are verification's own, the count is verification's verdict: the first step that
    passes there is the one (:func:`cleared`).

    Where there was more than one try, each is timed afterwards (images/s at batch 32 on this CPU, all in one
    process), so the report shows what keeping fewer layers float would buy and at what chance of passing
    (``report.search_lines``) — the trade ``asked`` makes. A single try is not: the report times the file
    it publishes anyway.

    ``asked``: that many float convolutions and no search — for whoever wants a faster file than the search's
    margin allows (the blood model packaged until 2026-12-06, INT8 at 3 float: 99.0% on verification's images,
    2.8x FP32's speed, where the search keeps 12: 99.9%, 1.4x; the one packaged since passed at 3 with 99.3%,
    yet changed 1.2% of TEST's calls: it ships at 5). Its one try is still recorded; verification decides."""
    tries, files = [], {}
    steps = (asked,) if asked is not None else FP16_FLOAT_STEPS if precision == "fp16" else INT8_FLOAT_STEPS
    for float_convs in steps:
        candidate = derive(precision, fp32, card, converters, float_convs=float_convs)
        files[float_convs] = candidate.rename(candidate.with_suffix(f".float{float_convs}.onnx"))  # each try kept
        probabilities = judged_probabilities(files[float_convs], search.on.images, precision)
        comparison = search.on.compare(probabilities, precision)
        flips = expected_flips(search.held_out_reference, search.on.reference, probabilities, search.on.calls)
        chance = pass_probability(precision, ESTIMATE_MARGIN * flips, search.verified)
        tries.append({"float_convs": float_convs, "agreement": comparison.agreement, "passed": comparison.passed,
                      "expected_flips": flips, "pass_probability": chance,
                      "cleared": cleared(comparison.passed, chance, search.verification_images)})
        if tries[-1]["cleared"]:
            break
    chosen = chosen_try(tries, search.verification_images)
    if len(tries) > 1:  # what fewer float layers would buy, for the report (one timing process for all tries)
        for entry, timing in zip(tries, speeds([files[t["float_convs"]] for t in tries], search.on.images,
                                               repeats=3)):
            entry["images_per_s_batch32"] = timing["images_per_s_batch32"]
    method = {"method": converters[precision].method()}
    searched_on = search.searched_on if asked is None else f"none: {asked} asked for (--float-convs)"
    return files[chosen["float_convs"]], {"float_convs": chosen["float_convs"], "search": tries,
                                          "searched_on": searched_on,
                                          "search_counted": search.verification_images, **method}


def asked_steps(float_convs: dict[str, int], precisions: tuple[str, ...]) -> dict[str, int]:
    """``float_convs`` checked against what is exported: only FP16 and INT8 have float layers to choose."""
    for precision, count in float_convs.items():
        if precision not in ("fp16", "int8") or precision not in precisions:
            raise ValueError(f"float convolutions are chosen for fp16 or int8 files being exported "
                             f"({', '.join(precisions)}), not for {precision}")
        if count < 0 or precision == "int8" and count < 1:
            raise ValueError(f"{precision}: {count} float convolutions; INT8 keeps at least its first one float")
    return float_convs


def chosen_try(tries: list[dict], on_verification_images: bool) -> dict:
    """The search's pick: the step it stopped at when one cleared (:func:`cleared`); else, searched on
    verification's own images, the one that agreed most there (its count is verification's verdict; ties: the
    one expected to change fewest); else the one expected to change fewest answers."""
    if tries[-1]["cleared"]:
        return tries[-1]
    if on_verification_images:
        return max(tries, key=lambda t: (t["agreement"], -t["expected_flips"]))
    return min(tries, key=lambda t: t["expected_flips"])


def cleared(passed: bool, chance: float, on_verification_images: bool) -> bool:
    """Whether the search stops at a step: verification should pass it nine times in ten (``chance``,
    :func:`pass_probability`) — or, searched on verification's own images, it ``passed`` there, which is then
    verification's verdict itself. Judged by the estimate alone, a 180-film DICOM run's INT8 (256 images, all
    of them verification's) was kept at 6 float convolutions, expected to change the fewest answers, and refused
    at 98.4%, while 12 and 15 had counted 99.2% on those very images."""
    return passed if on_verification_images else chance >= PASS_CONFIDENCE


def pass_probability(precision: str, flips: float, verified: int) -> float:
    """The chance that verification on ``verified`` images passes a file that changes a share ``flips`` of
    answers: that it counts no more changed answers than ``precision``'s tolerance allows (binomial).

    Judging a step by its estimate alone is a coin toss where the estimate sits at the tolerance: an FP16 file
    changing 0.1% of answers passes 99.9% on 1,024 images 73% of the time (0.05%: 91%), an INT8 one changing
    0.94% passes 99% 63% of the time (0.69%: 90%). Measured: 0.09% expected, 0.20% counted (the 160-px blood
    model's FP16, failed); 0.62% expected, 1.27% counted (a blood model fine-tuned from block 6, INT8, failed)."""
    return float(binom.cdf(TOLERANCES[precision].most_changes(verified), verified, flips))
