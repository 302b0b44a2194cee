"""Fitting a registry model on uint8 image arrays, with augmentation in the input pipeline only.

Two paths, one outcome (the full Keras model, trained):
- models with a frozen part (``Architecture.frozen_until``) compute that part once per image — over the
  original and ``augment_views`` augmented copies — then train in two stages on that cache: the new head
  alone on pooled features, then every layer above the cut at a lower rate, ending on a mix of the two
  stages' weights (``wise``);
- models without one train end to end, augmenting every batch in a ``tf.data`` pipeline.
Augmentation never enters the saved model.
"""

from __future__ import annotations

import math
import os
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.utils.class_weight import compute_class_weight

from medclf.rundir import CHECKPOINT
from medclf.runtime.atomic import replace_durably
from medclf.runtime.classifier import images_per_batch

from .architectures import Architecture
from .bars import track
from .budget import TimeBudget
from .evaluate import macro_roc_auc
from .progress import RichProgress

# Our datasets are shuffled in tf.data; Keras warns that its own shuffle flag is then unused.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")

HEAD_LEARNING_RATE = 1e-3
# WiSE-FT mixes tried, most robust first, and how much validation macro ROC AUC a more robust one may give up.
# Validation comes from the training site, so it cannot see what a mix buys on other sites' images: chest
# X-ray (default recipe) scored validation AUC 0.997-0.999 at every mix while test AUC went 0.956 (half) →
# 0.876 (fully fine-tuned). Where fine-tuning clearly pays on validation it is kept: blood cells' whole
# images, validation AUC 0.902 / 0.935 / 0.943 → 0.75 chosen, TEST 84.0% (74.3% at a fixed 0.5).
# With more than two classes the answer is the most probable class, so a mix must also not answer validation
# clearly worse than the most accurate mix (``clearly_worse``): a 9-class set of blood cells, chest films and eye
# photos scored validation AUC 0.987 / 0.995 / 0.994, within 0.01, but accuracy 73.5% / 88.2% / 92.1% — on its
# test images 56.3% / 71.5% / 81.3%. The blood cells' default run (224 px) moved from 0.75 to 1.0 by it (23 images
# lost, 9 won of 1,376 — copies of 55 cells, so fewer independent answers than it counts): TEST 85.2% → 87.9% of
# images, 92 of 100 cells either way. Two classes are decided at a threshold chosen on validation afterwards,
# which the AUC already judges.
WISE_MIXES = (0.5, 0.75, 1.0)
WISE_TOLERANCE = 0.01


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 30  # end-to-end epochs, or fine-tuning epochs after the head stage
    head_epochs: int = 10  # transfer models: epochs for the new head alone, on pooled features
    batch_size: int = 32
    learning_rate: float | None = None  # None: the architecture's own
    patience: int = 6  # epochs without validation improvement before stopping
    schedule: str = "plateau"  # learning rate: "plateau" (x0.3 after patience/2 flat epochs) or "step" (halve
    # every step_epochs epochs, as the seed tutorials did)
    step_epochs: int = 5
    augment_views: int = 2  # augmented copies per training image, for the cached-feature path
    augment: bool = True
    augmentation: str = "default"  # a policy in AUGMENTATIONS: what transforms keep the label true
    balance_classes: bool = True
    mixup: float = 0.4  # fine-tuning mixes pairs of examples, weight ~ Beta(a, a); 0 disables
    label_smoothing: float = 0.1
    ema_epochs: float = 1.5  # fine-tuning keeps an exponential moving average of the weights over about this
    # many epochs and ends with it: one cell's worth of memorisation averages out (0 disables)
    wise: float | None = None  # transfer models end on this mix of fine-tuned and linear-probe weights
    # (WiSE-FT, Wortsman et al. 2022): most of fine-tuning's accuracy, and frozen features' robustness to other
    # sites' images, at no cost in speed. 1: fully fine-tuned. None: the most robust of WISE_MIXES that
    # validation does not clearly object to (see _wise_mix)
    time_budget: float | None = 28.0  # minutes of wall clock for the whole run, decoding included: augmented
    # views and epochs that would not fit are dropped, and the run says so (None: no limit). See budget.py
    seed: int = 0
    distribute: str = "auto"  # "auto": mirrored over several GPUs where there are (tf.distribute); "off": one


def _default(seed: int) -> list[layers.Layer]:
    """Mild and safe for most images: a mirror, small turns, zooms and shifts, brightness."""
    return [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        layers.RandomTranslation(0.05, 0.05, fill_mode="reflect", seed=seed + 3),
        layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 4),
    ]


def _microscopy(seed: int) -> list[layers.Layer]:
    """A cell on a slide has no up or left, and stains vary between labs: any flip or turn, colour jitter."""
    return [
        layers.RandomFlip("horizontal_and_vertical", seed=seed),
        layers.RandomRotation(0.5, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        layers.RandomBrightness(0.1, value_range=(0, 255), seed=seed + 4),
        layers.RandomContrast(0.15, value_range=(0, 255), seed=seed + 5),
        layers.RandomSaturation(0.2, value_range=(0, 255), seed=seed + 6),
        layers.RandomHue(0.04, value_range=(0, 255), seed=seed + 7),
    ]


def _radiograph(seed: int) -> list[layers.Layer]:
    """Radiographs are framed differently by every site (collimation, markers, how much of the body): zoom in
    well past the lung borders and shift, vary exposure and contrast; mirror (the findings are not sided).
    Measured why: a model trained with mild zooms lost test AUC 0.91 → 0.81 when shown a centre 90% crop."""
    return [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomRotation(0.04, fill_mode="reflect", seed=seed + 1),
        layers.RandomZoom((-0.3, 0.1), fill_mode="reflect", seed=seed + 2),
        layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
        layers.RandomBrightness(0.2, value_range=(0, 255), seed=seed + 4),
        layers.RandomContrast(0.3, value_range=(0, 255), seed=seed + 5),
    ]


AUGMENTATIONS = {"default": _default, "microscopy": _microscopy, "radiograph": _radiograph}
SCHEDULES = ("plateau", "step")


def make_augmenter(seed: int, policy: str = "default") -> keras.Sequential:
    """Random label-preserving transforms of 0–255 float images, from one of ``AUGMENTATIONS``."""
    if policy not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {policy!r}; choose one of {sorted(AUGMENTATIONS)}")
    return keras.Sequential(AUGMENTATIONS[policy](seed), name="augment")


def fit(model: keras.Model, arch: Architecture, train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray], config: FitConfig, log_csv: Path,
        budget: TimeBudget | None = None) -> dict:
    """Train ``model`` in place. It ends with the moving average of its fine-tuning weights (``ema_epochs``),
    or, with that off, with the weights of its best validation epoch — mixed with the linear-probe weights
    by ``wise`` for transfer models (see FitConfig). ``budget`` (default: ``config``'s, from
    now) may cut augmented views and epochs. Returns what was decided along the way, for metrics.json."""
    budget = budget or TimeBudget(config.time_budget)
    keras.utils.set_random_seed(config.seed)
    log_csv.unlink(missing_ok=True)
    num_classes = model.output_shape[-1]
    class_weight = _class_weights(train[1], num_classes) if config.balance_classes else None
    one_hot = np.eye(num_classes, dtype=np.float32)  # labels one-hot from here on: mixup blends them
    train, val = (train[0], one_hot[train[1]]), (val[0], one_hot[val[1]])
    learning_rate = config.learning_rate or arch.learning_rate
    best = BestCheckpoint(model, log_csv.with_name(CHECKPOINT))
    if arch.frozen_until is None:
        augmenter = make_augmenter(config.seed, config.augmentation) if config.augment else None
        _stage(model, _mixed(_batches(*train, config, augmenter), config), _batches(*val), learning_rate,
               config.epochs, config, log_csv, class_weight, budget, ema_epochs=config.ema_epochs,
               checkpoint=best)
        return {}
    if arch.frozen_until == "pool":  # the whole backbone stays frozen: a dense head on cached pooled features
        frozen, head = _split_at_pool(model)
        pooled_train, train_y = _cached_features(frozen, train, config, budget)
        pooled_val = predict(frozen, val[0], dtype=np.float16)
        _stage(head, _mixed(_batches(pooled_train, train_y, config), config), _batches(pooled_val, val[1]),
               learning_rate, config.head_epochs + config.epochs, config, log_csv, class_weight, budget,
               name="head", checkpoint=best)
        return {}
    frozen, top, head, rest = _split(model, arch.frozen_until)
    train_x, train_y = _cached_features(frozen, train, config, budget)
    val_x = predict(frozen, val[0], dtype=np.float16)
    # Stage 1: a new head on the pooled ImageNet features (computed once), so stage 2 starts from sense.
    pooled_train, pooled_val = predict(top, train_x, dtype=np.float16), predict(top, val_x, dtype=np.float16)
    done = _stage(head, _batches(pooled_train, train_y, config), _batches(pooled_val, val[1]),
                  HEAD_LEARNING_RATE, config.head_epochs, config, log_csv, class_weight, budget, name="head",
                  checkpoint=best)
    probe = rest.get_weights()  # ImageNet's top with the new head: the linear-probe solution
    # Stage 2: fine-tune every layer above the cut, at the architecture's lower rate.
    _stage(rest, _mixed(_batches(train_x, train_y, config), config), _batches(val_x, val[1]), learning_rate,
           done + config.epochs, config, log_csv, class_weight, budget, initial_epoch=done,
           ema_epochs=config.ema_epochs, name="fine-tune", checkpoint=best)
    return {"wise": _wise_mix(rest, probe, (val_x, val[1]), config.wise)}


def _wise_mix(rest: keras.Model, probe: list[np.ndarray], val: tuple[np.ndarray, np.ndarray],
              wise: float | None) -> dict:
    """Set ``rest`` (fine-tuned) to a mix with the ``probe`` weights: ``wise`` of the fine-tuned, or if None the
    first of WISE_MIXES that validation does not clearly object to: its macro AUC within WISE_TOLERANCE of the
    best mix's (unless undefined: a class missing from validation) and, with more than two classes, its answers
    not clearly worse than the most accurate mix's."""
    tuned = rest.get_weights()

    def use(mix: float) -> None:
        rest.set_weights([mix * t + (1.0 - mix) * p for t, p in zip(tuned, probe)])

    labels = val[1].argmax(axis=1)
    scores: dict[float, float | None] = {}
    right: dict[float, np.ndarray] = {}
    if wise is None:
        for mix in WISE_MIXES:
            use(mix)
            probabilities = predict(rest, val[0])
            scores[mix] = macro_roc_auc(labels, probabilities)
            right[mix] = probabilities.argmax(axis=1) == labels
    chosen = wise if wise is not None else _most_robust_accepted(scores, right, binary=val[1].shape[1] == 2)
    use(chosen)
    return {"mix": chosen, "validation_auc": {str(mix): auc for mix, auc in scores.items()},
            "validation_accuracy": {str(mix): float(answers.mean()) for mix, answers in right.items()}}


def _most_robust_accepted(scores: dict[float, float | None], right: dict[float, np.ndarray], binary: bool) -> float:
    """The first of WISE_MIXES validation has no clear objection to (see _wise_mix), else the last."""
    best_auc = None if None in scores.values() else max(scores.values())
    most_accurate = max(right.values(), key=np.count_nonzero)
    for mix in WISE_MIXES[:-1]:
        ranks = best_auc is None or scores[mix] >= best_auc - WISE_TOLERANCE
        if ranks and (binary or not clearly_worse(right[mix], most_accurate)):
            return mix
    return WISE_MIXES[-1]


def clearly_worse(right: np.ndarray, best_right: np.ndarray) -> bool:
    """Whether the answers marked ``right`` (one bool per image) are worse than ``best_right``'s on the same
    images beyond chance: of the images only one of them gets right, the other gets more than two standard
    deviations above half (McNemar's sign test). A few images either way on a small validation set is noise."""
    lost = int(np.count_nonzero(best_right & ~right))
    won = int(np.count_nonzero(right & ~best_right))
    return lost - won > 2.0 * math.sqrt(lost + won)


def _stage(model: keras.Model, train: tf.data.Dataset, val: tf.data.Dataset, learning_rate: float, epochs: int,
           config: FitConfig, log_csv: Path, class_weight: dict[int, float] | None, budget: TimeBudget,
           initial_epoch: int = 0, ema_epochs: float = 0.0, name: str = "train",
           checkpoint: keras.callbacks.Callback | None = None) -> int:
    """One round of ``model.fit`` with early stopping on validation loss (and before ``budget`` runs out);
    returns the epochs run so far.

    Without EMA the best validation epoch's weights are restored; with it the run ends on the averaged weights
    (restoring one epoch's raw weights would throw the average away).
    """
    callbacks = [
        keras.callbacks.EarlyStopping("val_loss", patience=config.patience, restore_best_weights=not ema_epochs),
        _schedule(config, learning_rate, initial_epoch),
        budget.callback(name),
        keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(stage=name)),
        keras.callbacks.CSVLogger(str(log_csv), append=True),  # after the stage is added: it logs it
        RichProgress(name, epochs),
    ] + ([checkpoint] if checkpoint is not None else [])
    optimizer = keras.optimizers.Adam(learning_rate)
    if ema_epochs:
        momentum = 1.0 - 1.0 / max(2.0, ema_epochs * int(train.cardinality()))
        optimizer = keras.optimizers.Adam(learning_rate, use_ema=True, ema_momentum=momentum)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(optimizer, loss, metrics=["accuracy"])
    history = model.fit(train, validation_data=val, epochs=epochs, initial_epoch=initial_epoch,
                        callbacks=callbacks, class_weight=class_weight, verbose=0)
    return initial_epoch + len(history.epoch)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the *whole* model (not just the stage being trained: stages are views sharing its layers) whenever
    validation loss reaches a new best, across stages, so a crash or Ctrl-C never loses the best model so far.
    Written atomically; ``model.keras`` at the end is still the run's answer (with EMA it is the average)."""

    def __init__(self, full_model: keras.Model, path: Path) -> None:
        super().__init__()
        self.full_model, self.path, self.best = full_model, path, float("inf")
        path.unlink(missing_ok=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is None or not loss < self.best:
            return
        self.best = loss
        save_model(self.full_model, self.path)


def save_model(model: keras.Model, path: Path) -> None:
    """``model.save`` to a temporary sibling (Keras wants the .keras suffix), then renamed into place."""
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        model.save(temporary)
        replace_durably(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _schedule(config: FitConfig, learning_rate: float, initial_epoch: int) -> keras.callbacks.Callback:
    """The learning-rate schedule of one stage: reduce on a validation plateau, or step decay."""
    if config.schedule == "plateau":
        return keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=max(1, config.patience // 2))
    if config.schedule == "step":
        return keras.callbacks.LearningRateScheduler(
            lambda epoch: learning_rate * 0.5 ** ((epoch - initial_epoch) // config.step_epochs))
    raise ValueError(f"unknown schedule {config.schedule!r}; choose {' or '.join(SCHEDULES)}")


def _split(model: keras.Model, frozen_until: str) -> tuple[keras.Model, ...]:
    """Views of one model that share its layers: frozen part, ImageNet top, new head, and top + head."""
    cut, pooled = model.get_layer(frozen_until).output, model.get_layer("pool").output
    rest = keras.Model(cut, model.output, name="trainable")
    for layer in rest.layers:  # fine-tuning practice: batch-norm statistics stay those of ImageNet
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return (keras.Model(model.input, cut, name="frozen"), keras.Model(cut, pooled, name="top"),
            keras.Model(pooled, model.output, name="head"), rest)


def _split_at_pool(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Views of one model that share its layers: everything up to the pooled features, and the head after."""
    pooled = model.get_layer("pool").output
    return keras.Model(model.input, pooled, name="frozen"), keras.Model(pooled, model.output, name="head")


def _cached_features(frozen: keras.Model, train: tuple[np.ndarray, np.ndarray], config: FitConfig,
                     budget: TimeBudget) -> tuple[np.ndarray, np.ndarray]:
    """The frozen part's output for each training image and ``augment_views`` augmented copies of it — as many
    copies as half the time left affords, the other half being for fitting."""
    images, labels = train
    started = time.monotonic()
    views = [predict(frozen, images, dtype=np.float16, progress="caching features")]  # float16: half the memory
    wanted = config.augment_views if config.augment else 0
    affordable = budget.affordable(wanted, seconds_each=time.monotonic() - started, share=0.5)
    if affordable < wanted:
        budget.cut(f"{affordable} of {wanted} augmented views of the training images cached")
    if affordable:
        augmenter = make_augmenter(config.seed, config.augmentation)
        views += [predict(frozen, images, augmenter, np.float16, progress=f"caching augmented view {view + 1}")
                  for view in range(affordable)]
    return np.concatenate(views), np.concatenate([labels] * len(views))


def _batches(x: np.ndarray, y: np.ndarray, config: FitConfig | None = None,
             augmenter: keras.Sequential | None = None) -> tf.data.Dataset:
    """float32 batches: shuffled training batches (augmented, if given one) with a config, else evaluation ones."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if config is not None:
        dataset = dataset.shuffle(len(x), seed=config.seed)
    dataset = dataset.batch(config.batch_size if config is not None else 256)
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if augmenter is not None:
        dataset = dataset.map(lambda x, y: (augmenter(x, training=True), y))  # sequential, as in _mixed
    return dataset.prefetch(2)


def _mixed(dataset: tf.data.Dataset, config: FitConfig) -> tf.data.Dataset:
    """Mixup within each batch: blend every example (input and one-hot label) with a shuffled partner."""
    if not config.mixup:
        return dataset

    def mix(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # x is float32 already (_batches)
        n = tf.shape(x)[0]
        a, b = tf.random.gamma([n], config.mixup), tf.random.gamma([n], config.mixup)
        weight = a / (a + b)  # ~ Beta(mixup, mixup)
        partner = tf.random.shuffle(tf.range(n))
        wx = tf.reshape(weight, tf.concat([[n], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
        wy = weight[:, None]
        return wx * x + (1 - wx) * tf.gather(x, partner), wy * y + (1 - wy) * tf.gather(y, partner)

    return dataset.map(mix)  # sequential: parallel calls would race for the random state (not reproducible)


TRACED_FROM = 8  # batches; see predict
# An eager call of a functional Keras model keeps every layer's output alive until the call ends; a traced graph
# frees each as soon as it is used. Peak memory of the stacked model's feature pass, 64 images a batch: 224 px
# 7.2 GB eager, 1.7 GB traced; 352 px 16.6 vs 3.2 GB — and at 416 px the eager timing call that opens every
# run was killed for memory on a 24 GB machine. So an eager batch holds at most this many pixels (about 2.5 GB),
# and any batch at most the runtime's MAX_BATCH_PIXELS (images_per_batch): larger images, smaller batches.
EAGER_PIXELS = 64 * 128 * 128


def predict(model: keras.Model, inputs: np.ndarray, augmenter: keras.Sequential | None = None,
            dtype: type = np.float32, batch: int = 64, progress: str | None = None) -> np.ndarray:
    """``model``'s output for uint8 images (or cached features), in inference mode, batch by batch; with a
    ``progress`` description, a transient progress bar on stderr (feature caches take minutes on big data).
    Many batches go through one traced graph rather than eager calls: MobileNetV2 at 224 px, 512 images, 5.8 s
    instead of 8.7 (the first time 7.6 s with the tracing, 14.6 s eager), the same outputs and augmentations.
    Below :data:`TRACED_FROM` batches the tracing costs more than it saves — unless the images are so large
    that an eager batch would pass :data:`EAGER_PIXELS`. The graph is traced once per model and augmenter
    (:func:`_traced_step`), not once per call."""
    pixels = int(np.prod(inputs.shape[1:3])) if inputs.ndim == 4 else 1  # cached features: no pixels to bound
    batch = images_per_batch(*inputs.shape[1:3], most=batch) if inputs.ndim == 4 else batch
    if len(inputs) >= TRACED_FROM * batch or min(len(inputs), batch) * pixels > EAGER_PIXELS:
        step = _traced_step(model, augmenter)
    else:
        step = _step(weakref.ref(model), augmenter)
    out = []
    starts = range(0, len(inputs), batch)
    if progress is not None:
        starts = track(starts, progress)
    for start in starts:
        out.append(np.asarray(step(inputs[start:start + batch]), dtype=dtype))
    return np.concatenate(out)


# model → {id(augmenter): its traced step}; an entry goes with its model (the steps hold the model weakly)
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced_step(model: keras.Model, augmenter: keras.Sequential | None) -> Callable[[np.ndarray], tf.Tensor]:
    """The one ``tf.function`` of :func:`_step` for this model and augmenter. A new one per call traced the
    model every time (MobileNetV2 at 224 px: 1.1 s a batch of 64 instead of 0.6), so the speed a run measures
    on its first 64 images to size itself (:mod:`.sizing`) counted the tracing, and TensorFlow warned of
    "retracing" on the user's terminal. Weights set later (a WiSE mix, a restored epoch) are read by the
    graph: it holds the model's variables, not their values."""
    steps = _TRACED.setdefault(model, {})
    if id(augmenter) not in steps:  # the step holds the augmenter, so its id is not reused while it lives
        steps[id(augmenter)] = tf.function(_step(weakref.ref(model), augmenter), reduce_retracing=True)
    return steps[id(augmenter)]


def _step(model: weakref.ref, augmenter: keras.Sequential | None) -> Callable[[np.ndarray], tf.Tensor]:
    def step(x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        if augmenter is not None:
            x = augmenter(x, training=True)
        return model()(x, training=False)

    return step


def _class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)} | {
        c: 1.0 for c in range(num_classes) if c not in present}
