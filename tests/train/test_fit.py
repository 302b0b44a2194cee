"""Fitting paths and schedules, on small real subsets (cataract photos)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medclf.train.fit import FitConfig
from medclf.train.pipeline import Recipe, train
from tests.conftest import needs_weights, run_python


def history(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_step_decay_halves_the_learning_rate_every_step(cataract, tmp_path):
    config = FitConfig(epochs=3, schedule="step", step_epochs=1, patience=10, ema_epochs=0)
    train(cataract, tmp_path, Recipe(arch="small_cnn", image_size=32, val_split=0.3, fit=config))
    rates = [float(row["learning_rate"]) for row in history(tmp_path)]
    np.testing.assert_allclose(rates, [1e-3, 5e-4, 2.5e-4], rtol=1e-5)


@needs_weights
def test_two_frozen_backbones_train_only_their_head(cataract, tmp_path):
    import keras

    from medclf.train.architectures import get_architecture

    config = FitConfig(epochs=1, head_epochs=1, augment_views=0)
    result = train(cataract, tmp_path, Recipe(arch="two_backbones", image_size=64, val_split=0.3, fit=config))
    trained = keras.models.load_model(tmp_path / "model.keras", compile=False)
    fresh = get_architecture("two_backbones").build((64, 64, 3), 2, True)
    for layer in ("Conv1", "conv_pw_13"):  # one layer of each backbone: still ImageNet's
        kernel = fresh.get_layer(layer).get_weights()[0]
        np.testing.assert_array_equal(trained.get_layer(layer).get_weights()[0], kernel)
    assert len(history(tmp_path)) == 2 and result.metrics["validation"]["roc_auc_macro"] is not None


@needs_weights
def test_the_log_names_each_epochs_stage_and_the_curves_mark_where_fine_tuning_begins(cataract, tmp_path):
    config = FitConfig(epochs=2, head_epochs=2, patience=10, augment_views=0)
    train(cataract, tmp_path, Recipe(arch="mobilenet_025", image_size=64, val_split=0.3, fit=config))
    rows = history(tmp_path)
    assert [row["stage"] for row in rows] == ["head", "head", "fine-tune", "fine-tune"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_the_best_model_so_far_is_kept_on_disk_as_a_whole_model(cataract, tmp_path):
    import keras

    config = FitConfig(epochs=2, head_epochs=2, patience=10, augment_views=0, ema_epochs=0, wise=1.0)
    train(cataract, tmp_path, Recipe(arch="mobilenet_025", image_size=64, val_split=0.3, fit=config))
    best = keras.models.load_model(tmp_path / "checkpoint.keras", compile=False)
    final = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert best.input_shape == final.input_shape and best.output_shape == final.output_shape
    # without EMA or a WiSE mix the run ends on its best validation epoch, so the checkpoint is that very model
    for a, b in zip(best.get_weights(), final.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary file left behind


@needs_weights
@pytest.mark.parametrize("wise", [0.0, 0.5])
def test_fine_tuned_weights_end_mixed_with_the_linear_probe_by_the_wise_share(cataract, tmp_path, wise):
    """WiSE-FT: 0 keeps ImageNet's top layers (the head of the head stage), 0.5 lands halfway to fine-tuned."""
    import keras

    from medclf.train.architectures import get_architecture

    config = FitConfig(epochs=2, head_epochs=1, patience=10, augment_views=0, ema_epochs=0, wise=wise)
    train(cataract, tmp_path, Recipe(arch="mobilenet_025", image_size=64, val_split=0.3, fit=config))
    trained = keras.models.load_model(tmp_path / "model.keras", compile=False).get_layer("conv_pw_13").get_weights()[0]
    imagenet = get_architecture("mobilenet_025").build((64, 64, 3), 2, True).get_layer("conv_pw_13").get_weights()[0]
    if wise == 0.0:
        np.testing.assert_array_equal(trained, imagenet)
    else:  # fine-tuning moved the layer; the mix is half of that move
        config = FitConfig(epochs=2, head_epochs=1, patience=10, augment_views=0, ema_epochs=0, wise=1.0)
        train(cataract, tmp_path / "tuned", Recipe(arch="mobilenet_025", image_size=64, val_split=0.3, fit=config))
        tuned = keras.models.load_model(tmp_path / "tuned" / "model.keras",
                                        compile=False).get_layer("conv_pw_13").get_weights()[0]
        assert np.abs(tuned - imagenet).max() > 1e-4
        np.testing.assert_allclose(trained, 0.5 * tuned + 0.5 * imagenet, atol=1e-6)


def _scorer(tuned_slope: float, probe_slope: float):
    """A one-feature softmax classifier whose fine-tuned and probe weights rank validation differently."""
    import keras

    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    weights = lambda slope: [np.array([[-slope, slope]], np.float32), np.zeros(2, np.float32)]  # noqa: E731
    model.set_weights(weights(tuned_slope))
    x = np.linspace(-1, 1, 20, dtype=np.float32)[:, None]
    return model, weights(probe_slope), (x, np.eye(2, dtype=np.float32)[(x[:, 0] > 0).astype(int)])


@pytest.mark.parametrize("tuned, probe, chosen", [
    (1.0, 0.5, 0.5),  # every mix ranks validation perfectly: the most robust one
    (1.0, -1.0, 0.75),  # half-and-half cancels out (AUC 0.5): the first mix validation does not object to
    (1.0, -3.0, 1.0),  # only the fully fine-tuned weights rank right
])
def test_the_wise_mix_is_the_most_robust_one_validation_does_not_clearly_object_to(tuned, probe, chosen):
    from medclf.train.fit import _wise_mix

    model, probe_weights, val = _scorer(tuned, probe)
    decided = _wise_mix(model, probe_weights, val, wise=None)
    assert decided["mix"] == chosen and set(decided["validation_auc"]) == {"0.5", "0.75", "1.0"}
    slope = model.get_weights()[0][0, 1]
    assert slope == pytest.approx(chosen * tuned + (1 - chosen) * probe)


def test_a_fixed_wise_share_is_used_as_given_without_scoring():
    from medclf.train.fit import _wise_mix

    model, probe_weights, val = _scorer(1.0, -1.0)
    assert _wise_mix(model, probe_weights, val, wise=0.5) == {"mix": 0.5, "validation_auc": {},
                                                                "validation_accuracy": {}}
    assert model.get_weights()[0][0, 1] == pytest.approx(0.0)


def _leaning_scorer(classes: int):
    """A softmax classifier of ``classes`` noisy clusters whose probe weights lean hard towards class 0: every
    mix ranks each class about as well (a constant on one logit), but the leaning ones answer class 0 too often."""
    import keras

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 30)
    x = (np.eye(classes)[labels] + rng.normal(0, 0.35, (len(labels), classes))).astype(np.float32)
    inputs = keras.Input((classes,))
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(inputs))
    kernel = 4.0 * np.eye(classes, dtype=np.float32)
    model.set_weights([kernel, np.zeros(classes, np.float32)])
    probe = [kernel, np.eye(classes, dtype=np.float32)[0] * 6.0]
    return model, probe, (x, np.eye(classes, dtype=np.float32)[labels])


def test_with_more_than_two_classes_a_mix_that_answers_clearly_worse_is_not_chosen():
    """Three classes: half-and-half ranks within 0.01 AUC of the best but gets 9 more of 90 images wrong; three
    quarters answers as well as fully fine-tuned, so it is the most robust mix validation accepts."""
    from medclf.train.fit import _wise_mix

    model, probe, val = _leaning_scorer(3)
    decided = _wise_mix(model, probe, val, wise=None)
    auc, accuracy = decided["validation_auc"], decided["validation_accuracy"]
    assert max(auc.values()) - auc["0.5"] < 0.01 and accuracy["0.5"] < accuracy["1.0"] - 0.05
    assert decided["mix"] == 0.75


def test_two_classes_are_judged_by_their_ranking_alone():
    """A binary model answers at a threshold chosen on validation afterwards, so how its argmax leans at 0.5
    does not count against a mix."""
    from medclf.train.fit import _wise_mix

    model, probe, val = _leaning_scorer(2)
    assert _wise_mix(model, probe, val, wise=None)["mix"] == 0.5


@pytest.mark.parametrize("lost, won, worse", [
    (0, 0, False),  # the same answers
    (3, 0, False),  # three images on a small validation set: noise
    (12, 4, False),  # 8 more wrong of 16 that differ: within two standard deviations (8)
    (14, 3, True),  # 11 more of 17: beyond (8.2)
])
def test_clearly_worse_is_a_sign_test_on_the_images_the_two_answer_differently(lost, won, worse):
    from medclf.train.fit import clearly_worse

    best = np.array([True] * lost + [False] * won + [True] * 50)
    right = np.array([False] * lost + [True] * won + [True] * 50)
    assert clearly_worse(right, best) is worse
    assert not clearly_worse(best, right)


def test_large_images_go_through_the_model_a_bounded_batch_at_a_time():
    """Every run opens by timing the model eagerly on 64 images; an eager Keras call keeps all of its layers'
    outputs, so at 416 px that call alone passed 24 GB and the run was killed. Now it peaks at a few GB."""
    code = ("import resource, numpy as np\nfrom medclf.train.architectures import get_architecture\n"
            "from medclf.train.fit import predict\n"
            "model = get_architecture('mobilenet_v2').build((416, 416, 3), 2, False)\n"
            "images = np.random.default_rng(0).integers(0, 256, (64, 416, 416, 3), dtype=np.uint8)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "assert predict(model, images).shape == (64, 2)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20)")
    grown_gb = float(run_python(code).stdout.split()[-1])
    assert grown_gb < 5.0  # eager, 64 at once: 16.6 GB at 352 px


def test_a_model_is_traced_once_however_often_it_predicts_and_its_graph_reads_new_weights():
    """A run predicts with the same model many times (timing it, scoring each WiSE mix): tracing it on every
    call cost 0.5 s a call at 224 px, and the timing that sizes the run measured the tracing."""
    import gc
    import weakref

    from medclf.train.architectures import get_architecture
    from medclf.train.fit import _traced_step, predict

    model = get_architecture("mobilenet_025").build((224, 224, 3), 2, False)  # 64 such images: traced
    images = np.random.default_rng(0).integers(0, 256, (70, 224, 224, 3), dtype=np.uint8)
    first = predict(model, images)
    np.testing.assert_array_equal(predict(model, images), first)
    assert _traced_step(model, None).experimental_get_tracing_count() == 2  # batches of 64 and the last 6

    model.set_weights([w * 0.5 for w in model.get_weights()])  # how a WiSE mix is set
    expected = np.asarray(model(images[:8].astype(np.float32), training=False))
    np.testing.assert_allclose(predict(model, images)[:8], expected, atol=1e-6)

    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # the traced step does not keep a finished run's model alive
