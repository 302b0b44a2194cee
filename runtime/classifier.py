"""Classify images with a medclf ONNX model on onnxruntime: the Python API the ``medclf-run`` CLI uses."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import open_backend
from .cam import called_maps, heatmaps, overlay_name, write_overlay
from .cpu import fp16_caveat, int8_caveat
from .decision import decide
from .inputs import STDIN
from .modelcard import CAM_NAME, FAMILIARITY_NAME, OUTPUT_NAME, ModelCard, ModelCardError, unlike
from .cpu_limit import usable_cpus
from .stream import decoded
from .tta import averaged, checked

# White-blood-cell classifier trained by medclf on blood-cells/TRAIN; README says how to reproduce it.
DEFAULT_MODEL = Path(__file__).parent / "models" / "blood_cells" / "model.onnx"
# Pixels in one inference call, at most, unless a batch size is given: a call keeps every image's activations
# until it ends. 745 chest films at 352 px in one call took onnxruntime past 24 GB (killed); in runs of this many
# (64 films), about 2 GB. Training's Keras passes keep to it too (3.2 GB traced at 352 px).
MAX_BATCH_PIXELS = 64 * 352 * 352


def images_per_batch(height: int, width: int, most: int | None = None) -> int:
    """How many ``height`` x ``width`` images one inference call takes: as many as hold ``MAX_BATCH_PIXELS``,
    at least one, and no more than ``most`` when given."""
    fits = max(1, MAX_BATCH_PIXELS // (height * width))
    return fits if most is None else max(1, min(most, fits))


def default_threads() -> int:
    """One intra-op thread per CPU this process may use (its affinity mask or its container's quota:
    :mod:`.cpu_limit`).

    Measured on the 2-core CPU here with the packaged MobileNetV2 (128 px), idle machine: 1 thread 3.3 ms per
    image at batch 1 and 391 images/s at batch 32; 2 threads 1.6 ms and 626 images/s (at 160 px: 5.0 / 2.6 ms,
    229 / 396 images/s; onnxruntime's own default (0) 3.1 ms). On a machine busy with other work,
    ``--threads 1`` can be the faster choice.
    """
    return usable_cpus()


@dataclass(frozen=True)
class Prediction:
    """The answer for one input: the called label and its probability, the top-k labels by probability, or why
    it could not be classified. The call is the top-1 label, except for a binary model with an operating
    threshold (``medclf.decision``), which can call the finding below 50%."""

    path: str
    label: str | None = None
    probability: float | None = None
    top_k: tuple[tuple[str, float], ...] = ()
    error: str | None = None
    heatmap: str | None = None  # the overlay written for the called label, when asked for (--cam DIR)
    heatmap_error: str | None = None  # why that overlay could not be written (the answer itself stands)
    unfamiliarity: float | None = None  # how unlike the training images (models that say): above 1, warn

    @property
    def failure(self) -> str | None:
        """Why this input failed (not classified, or its heatmap not written), or None: what sets exit status 1."""
        return self.error if self.error is not None else self.heatmap_error

    @property
    def unlike_training(self) -> bool:
        """Whether the image lies farther from the model's training images than 99.5% of its held-out images
        do: its call is then no more than a guess (a chest film given to a blood-cell model, a grey smear); NaN
        counts as unlike (:func:`~.modelcard.unlike`)."""
        return self.unfamiliarity is not None and bool(unlike(self.unfamiliarity))

    def to_dict(self) -> dict[str, object]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        heatmap = {"heatmap": self.heatmap} if self.heatmap is not None else {}
        if self.heatmap_error is not None:  # the overlay the disk refused: its reason, in place of its name
            heatmap = {"heatmap_error": self.heatmap_error}
        familiarity = {} if self.unfamiliarity is None else {  # JSON has no inf or NaN: null, flagged
            "unfamiliarity": self.unfamiliarity if math.isfinite(self.unfamiliarity) else None,
            "unlike_training": self.unlike_training}
        return {"path": self.path, "label": self.label, "probability": self.probability,
                "top_k": [[label, p] for label, p in self.top_k]} | familiarity | heatmap


class Classifier:
    """One inference session for the life of the process, with the model's own labels and preprocessing.

    ``backend``: ``cpu`` (default), ``cuda``, ``ort-tensorrt``, ``tensorrt`` or ``auto`` (see
    :mod:`medclf.runtime.backends`); one that cannot start raises :class:`BackendUnavailable` saying why.
    ``streaming``: set it when this classifier will mostly :meth:`classify` many files, so that the model's
    threads sleep rather than spin while the decoding threads work (faster folders, slower single images).
    ``reuse_optimized``: start the CPU session from the graph onnxruntime optimized for this machine last time,
    kept in the cache (35 ms faster for the packaged model; what a one-shot ``medclf-run`` asks for).
    ``tta``: ``flip`` or ``dihedral`` averages the probabilities over those views of each image (:mod:`.tta`);
    unfamiliarity and class activation maps stay the image's own."""

    def __init__(self, model: str | os.PathLike[str] | None = None, threads: int | None = None,
                 backend: str = "cpu", streaming: bool = False, reuse_optimized: bool = False,
                 tta: str | None = None) -> None:
        self.model_path = Path(model) if model is not None else DEFAULT_MODEL
        _check_model_path(self.model_path)
        self.tta = tta if tta is None else checked(tta)
        self.backend = open_backend(self.model_path, backend, threads or default_threads(), spin=not streaming,
                                    reuse_optimized=reuse_optimized)
        self.card = ModelCard.from_metadata(self.backend.metadata, str(self.model_path))
        if self.backend.classes not in (None, len(self.labels)):  # a labels list from another model's card
            raise ModelCardError(f"{self.model_path}: its model card names {len(self.labels)} classes and the "
                                 f"model gives probabilities for {self.backend.classes}")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.card.labels

    @property
    def says_unfamiliar(self) -> bool:
        """Whether the model says how unlike its training images an image is (exported since 2026-12-06)."""
        return FAMILIARITY_NAME in self.card.outputs

    @property
    def caveat(self) -> str:
        """One line worth telling the user about serving this file here, or "" (see :mod:`.cpu`)."""
        model, backend = str(self.model_path), self.backend.name
        return int8_caveat(self.card, model, backend) or fp16_caveat(self.card, model, backend)

    def predict(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Probabilities ``[N, classes]`` for uint8 images ``[N, H, W, C]`` already preprocessed — RGB (or grey),
        as :func:`~.preprocess.load_image` and :func:`~.preprocess.image_from_bytes` give them; OpenCV's
        ``imread`` gives BGR, which a colour model reads wrong (38% right on blood cells instead of 85%) — in runs of
        ``batch_size`` — by default as many images as hold ``MAX_BATCH_PIXELS`` — since a run keeps all its
        images' activations in memory until it ends."""
        return self.outputs([OUTPUT_NAME], images, batch_size)[0]

    @property
    def answer_outputs(self) -> list[str]:
        """The outputs every answer reads: ``probabilities``, and ``unfamiliarity`` where the model has it."""
        return [OUTPUT_NAME] + ([FAMILIARITY_NAME] if self.says_unfamiliar else [])

    def assess(self, images: np.ndarray, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``[N, classes]`` and, where the model has that output, unfamiliarity ``[N]`` (else None),
        from one pass (see :meth:`predict` for ``batch_size``)."""
        probabilities, *unfamiliarity = self.outputs(self.answer_outputs, images, batch_size)
        return probabilities, unfamiliarity[0][:, 0] if unfamiliarity else None

    def unfamiliarity(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """``[N]``: how unlike the model's training images each image is, above 1 unlike them (see
        :attr:`Prediction.unlike_training`); ModelCardError for a model exported without it."""
        if not self.says_unfamiliar:
            raise ModelCardError(f"{self.model_path}: exported without the unfamiliarity output (medclf export "
                                 "adds it by default since 2026-12-06)")
        return self.outputs([FAMILIARITY_NAME], images, batch_size)[0][:, 0]

    def outputs(self, names: list[str], images: np.ndarray, batch_size: int | None = None) -> list[np.ndarray]:
        """The outputs ``names`` (``probabilities``, and those the card lists) for ``images``, in runs of
        ``batch_size`` (see :meth:`predict`): several outputs from one pass; with ``tta``, the probabilities
        averaged over the views (:mod:`.tta`), the other outputs from the images as they are."""
        self._check(images)
        results = self._outputs(names, images, batch_size)
        if self.tta is None or OUTPUT_NAME not in names:
            return results
        at = names.index(OUTPUT_NAME)
        results[at] = averaged(lambda view: self._outputs([OUTPUT_NAME], view, batch_size)[0], images, self.tta,
                               own=results[at])
        return results

    def _check(self, images: np.ndarray) -> None:
        """A ValueError that says what the model takes, for arrays it does not (a grey image without its batch
        and channel axes failed deep inside as "images_per_batch() missing 1 required positional argument")."""
        shape = self.card.preprocess.shape
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == shape):
            got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
            raise ValueError(f"{self.model_path} takes uint8 images [N, {', '.join(map(str, shape))}] "
                             f"({'RGB' if shape[2] == 3 else 'grey'}, as load_image gives them), not {got}")

    def _outputs(self, names: list[str], images: np.ndarray, batch_size: int | None) -> list[np.ndarray]:
        if batch_size is None:
            batch_size = images_per_batch(*images.shape[1:3])
        batch_size = min(batch_size, self.backend.most_images or batch_size)  # a TensorRT EP profile's largest
        if len(images) <= batch_size:
            return self.backend.run(names, images)
        runs = [self.backend.run(names, images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        return [np.concatenate(output) for output in zip(*runs)]

    def require_cam(self) -> None:
        """Raise :class:`ModelCardError` unless the model has a class-activation-map output."""
        if CAM_NAME not in self.card.outputs:
            raise ModelCardError(f"{self.model_path}: exported without class activation maps, so no heatmaps "
                                 f"(export it with medclf export --cam)")

    def cam(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``[N, classes]`` and class activation maps ``[N, h, w, classes]``, for a model exported
        with ``medclf export --cam``; draw them with :mod:`medclf.runtime.cam`."""
        self.require_cam()
        probabilities, maps = self.outputs([OUTPUT_NAME, CAM_NAME], images)
        return probabilities, maps

    def classify(self, paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], top_k: int = 1,
                 batch_size: int = 32, cam_dir: str | os.PathLike[str] | None = None, workers: int | None = None,
                 processes: bool = False) -> Iterator[Prediction]:
        """Classify files in order, batching the good ones, decoding ahead in ``workers`` threads (or processes)
        while the model runs; a bad file yields an error, the rest go on. One path alone is one file (a string was
        read letter by letter, ``/`` among them: the whole disk). ``cam_dir``: also write a heatmap overlay for
        each called label there (models exported with ``--cam``). ``processes``: decode in worker processes, for
        long runs on many cores (:func:`.stream.use_processes` says when they pay)."""
        if top_k < 1:  # -1 read as a slice gave every class but the least likely
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if cam_dir is not None:
            self.require_cam()
        paths = [paths] if isinstance(paths, (str, bytes, os.PathLike)) else paths
        paths = (os.fsdecode(path) for path in paths)  # answers name them as strings, JSON-ready (bytes too)
        pending: list[tuple[str, np.ndarray | None, str | None]] = []  # images to run and failures, in order
        held = 0
        for path, image, error in decoded(paths, self.card.preprocess, workers, ahead=2 * batch_size + 8,
                                          processes=processes):
            pending.append((path, image, error))
            held += error is None
            if held == batch_size:
                yield from self._answered(pending, top_k, cam_dir)
                pending, held = [], 0
        yield from self._answered(pending, top_k, cam_dir)

    def _answered(self, pending: list[tuple[str, np.ndarray | None, str | None]], top_k: int,
                  cam_dir: str | os.PathLike[str] | None) -> Iterator[Prediction]:
        """The images among ``pending`` run as one batch, and every answer in input order: a bad file no longer
        cuts a batch short (every third file bad: 1,000 runs of 2 images instead of 63 of 32 — a GPU's loss)."""
        answers = self._answers_for([(path, image) for path, image, error in pending if error is None], top_k, cam_dir)
        for path, _, error in pending:
            yield Prediction(path=path, error=error) if error is not None else next(answers)

    def _answers_for(self, batch: list[tuple[str, np.ndarray]], top_k: int,
                     cam_dir: str | os.PathLike[str] | None) -> Iterator[Prediction]:
        """The answers for one batch. Where the model fails on it (out of memory on a busy GPU or a small machine:
        it ended the run in a traceback, every answer lost), each half is run alone, down to single images, which
        fail with the model's reason."""
        if not batch:
            return
        images = np.stack([image for _, image in batch])
        names = self.answer_outputs + ([CAM_NAME] if cam_dir is not None else [])
        try:
            outputs = dict(zip(names, self.outputs(names, images)))
        except Exception as exc:  # noqa: BLE001 — onnxruntime's and TensorRT's errors share no base class
            del images
            if len(batch) == 1:
                yield Prediction(path=batch[0][0], error=f"the model failed on it ({' '.join(str(exc).split())})")
            else:
                yield from self._answers_for(batch[:len(batch) // 2], top_k, cam_dir)
                yield from self._answers_for(batch[len(batch) // 2:], top_k, cam_dir)
            return
        probabilities, maps = outputs[OUTPUT_NAME], outputs.get(CAM_NAME)
        unfamiliarity = outputs[FAMILIARITY_NAME][:, 0] if FAMILIARITY_NAME in outputs else [None] * len(batch)
        called = decide(probabilities, self.labels, self.card.decision)
        for n, ((path, image), row, label) in enumerate(zip(batch, probabilities, called)):
            if not np.isfinite(row).all():  # JSON has no NaN, and argmax would call the first class
                yield Prediction(path=path, error=f"the model answered NaN or infinity for it ({row.tolist()}): an "
                                                  "overflow inside the model, as in an FP16 file's float16 layers")
                continue
            order = np.argsort(-row)[:top_k]
            heatmap, heatmap_error = None, None
            if maps is not None:  # a piped image has no path of its own: named by its pixels, not "-"
                heatmap = str(Path(cam_dir) / overlay_name(path, self.labels[label], "cam",
                                                           key=image.tobytes() if path == STDIN else None))
                evidence = called_maps(maps[n:n + 1], np.array([label]), self.labels, self.card.decision)
                heatmap_error = write_overlay(heatmap, image, heatmaps(evidence, *image.shape[:2])[0])
            yield Prediction(path=path, label=self.labels[label], probability=float(row[label]),
                             top_k=tuple((self.labels[i], float(row[i])) for i in order),
                             heatmap=heatmap if heatmap_error is None else None, heatmap_error=heatmap_error,
                             unfamiliarity=None if unfamiliarity[n] is None else float(unfamiliarity[n]))


def _check_model_path(path: Path) -> None:
    """The mistakes a first run makes, each said with its remedy: a run folder or a Keras file for the ONNX file."""
    if path.is_dir():  # looked for where medclf export puts it: in the folder or one below (not a whole tree)
        onnx_files = sorted(path.glob("model.onnx")) + sorted(path.glob("*/model.onnx"))
        hint = f"; did you mean {onnx_files[0]}?" if onnx_files else " (medclf export writes model.onnx)"
        raise FileNotFoundError(f"{path}: a folder; give the exported .onnx file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    if path.suffix in (".keras", ".h5"):
        raise ModelCardError(f"{path}: a Keras model; the runtime serves exported ONNX files: "
                             f"medclf export {path} --out DIR, then --model DIR/model.onnx")
