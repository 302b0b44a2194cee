"""Which real images an export is checked and calibrated on, and what they are, in words for its report.

The run's held-out validation split (or ``--verify-data``) for verification, its training images (or
``--calibration``) for INT8's calibration, FP16's rounding and the unfamiliarity output's fit: recorded in the run's
``splits.json``, those still on disk, evenly spread.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from medclf.rundir import RunDir
from medclf.runtime.modelcard import ModelCard

from .held_out import MIN_VERIFY_IMAGES
from .labelled_images import folder_images, load_labelled, spread

# Verification images, at most: FP16's tolerance (99.9% agreement) is "no flip at all" on fewer than 1,000,
# and a file that truly flips 0.44% of answers (the demo model's FP16, on all 1,376 held-out cells) passed 256
# images about one time in three. (medclf export's --verify-images default repeats it.)
MAX_VERIFY_IMAGES = 1024
CALIBRATION_IMAGES = 256  # training images INT8 calibrates on (and FP16 rounds its weights by)

def verification_set(model_path: Path, card: ModelCard, data: str | os.PathLike[str] | None = None,
                     max_images: int = MAX_VERIFY_IMAGES) -> tuple[np.ndarray, np.ndarray | None]:
    """The real images every export is checked on, decoded by the runtime: the run's held-out validation split
    or ``data``, evenly spread, at most ``max_images``; with label indices when known."""
    return load_labelled(*chosen_images(model_path.parent, data, "val", "--verify-data", max_images), card)


def chosen_images(run_dir: Path, data: str | os.PathLike[str] | None, split: str, option: str,
            most: int) -> tuple[list[str], list[str]]:
    """At most ``most`` of :func:`all_images`, evenly spread, with their class names."""
    paths, names = all_images(run_dir, data, split, option)
    pick = spread(len(paths), most)
    return [paths[i] for i in pick], [names[i] for i in pick]


def all_images(run_dir: Path, data: str | os.PathLike[str] | None, split: str,
                option: str) -> tuple[list[str], list[str]]:
    """Images with their class names: those under ``data`` (the class is the folder a file sits in), or the
    run's recorded ``split`` ("val" to verify on, "train" to calibrate on)."""
    if data is not None:
        paths, names = folder_images(data)
    else:
        try:
            paths, names = recorded(run_dir, split)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; pass {option} with real images") from None
        if paths and not any(os.path.exists(path) for path in paths):
            raise FileNotFoundError(f"{run_dir / 'splits.json'} lists its {split} images under "
                                    f"{os.path.commonpath(paths)}, and none of them is there any more (moved or "
                                    f"on another machine?); pass {option} with real images")
        paths, names = _present(paths, names, run_dir, split)
    if not paths:
        raise FileNotFoundError(f"no images in {data or run_dir / 'splits.json'}")
    return paths, names


def verification_images(run_dir: Path, data: str | os.PathLike[str] | None,
                         calibration_data: str | os.PathLike[str] | None,
                         most: int = MAX_VERIFY_IMAGES, calibrating: bool = True) -> tuple[list[str], list[str], str]:
    """The images export verifies on, their class names, and what they are for the report: those under
    ``data``, or the run's held-out validation split — topped up, when it holds fewer than
    ``MIN_VERIFY_IMAGES`` (or than the ``most`` asked for, if fewer), with the run's test images and then its
    training images, those INT8 is not calibrated on first (where INT8 is ``calibrating`` on them at all).

    Why: a tolerance cannot be judged on a few dozen images. On 27 (a 180-image run's validation split) one
    changed answer fails INT8 at 96.3%, and an FP16 file that changes 1% of answers still passes three times in
    four. Training images are real images of the same kind; the model is surer of them, so they agree a little
    more easily, and the report says how many of each kind there were."""
    if data is not None:
        paths, names = all_images(run_dir, data, "val", "--verify-data")
        return paths, names, f"from {data}"
    paths, names = all_images(run_dir, None, "val", "--verify-data")
    wanted = min(MIN_VERIFY_IMAGES, most)
    if len(paths) >= wanted:
        return paths, names, f"held-out validation split of {run_dir}"
    counts, calibrated = {"held-out validation": len(paths)}, 0
    for split, kind in (("test", "test"), ("train", "training")):
        try:
            more, more_names = _present(*recorded(run_dir, split), run_dir, split)
        except FileNotFoundError:  # runs trained without --test, or before splits.json recorded it
            continue
        on_calibration = calibrating and split == "train" and calibration_data is None
        pick = _top_up(len(more), wanted - len(paths), calibration_last=on_calibration)
        paths, names = paths + [more[i] for i in pick], names + [more_names[i] for i in pick]
        counts[kind] = len(pick)
        if on_calibration:
            calibrated = int(np.isin(pick, spread(len(more), CALIBRATION_IMAGES)).sum())
    said = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    said = f"{said} images of {run_dir}: its held-out split has under {wanted}"
    if calibrated:  # the training images INT8 was not calibrated on ran out: its verdict is kinder there
        said += f"; {calibrated} of the training images are INT8's calibration images (too few others)"
    return paths, names, said


def recorded(run_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """A split's paths and class names as the run recorded them (FileNotFoundError if it did not)."""
    run = RunDir(run_dir)
    paths, indices = run.split(split)
    return paths, [run.labels[i] for i in indices]


def _present(paths: list[str], names: list[str], run_dir: Path, split: str) -> tuple[list[str], list[str]]:
    """The recorded images still on disk, the others said in one line: a line per missing file was printed and the
    report counted them as verified on ("18 held-out validation images" of which 6 were gone)."""
    present = [i for i, path in enumerate(paths) if os.path.exists(path)]
    if gone := sorted(set(paths) - {paths[i] for i in present}):
        print(f"{len(gone)} of the {len(paths)} {split} images {run_dir / 'splits.json'} lists are gone (e.g. "
              f"{gone[0]}): left out", file=sys.stderr)
    return [paths[i] for i in present], [names[i] for i in present]


def _top_up(count: int, wanted: int, calibration_last: bool) -> np.ndarray:
    """Up to ``wanted`` of ``count`` images, evenly spread; ``calibration_last``: of training images, those
    INT8's calibration does not take (an even spread of ``CALIBRATION_IMAGES``) before those it does."""
    wanted = max(0, min(wanted, count))
    if not calibration_last:
        return spread(count, wanted)
    used = spread(count, CALIBRATION_IMAGES)
    rest = np.setdiff1d(np.arange(count), used)
    first = rest[spread(len(rest), wanted)]
    return np.concatenate([first, used[spread(len(used), wanted - len(first))]])
