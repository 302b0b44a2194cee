"""Folder throughput, side by side: medclf's streaming classifier vs Keras ``image_dataset_from_directory`` +
``predict``, and the bound each stage sets when measured alone (decode and resize only; inference only on
pre-decoded arrays), and decoding in processes rather than threads. Each benchmark classifies the same
FOLDER_IMAGES real images once per round."""

from __future__ import annotations

from medclf.runtime.stream import decoded

BATCH = 32


def test_medclf_folder(benchmark, streaming_classifier, image_paths):
    def classify_all() -> int:
        return sum(1 for p in streaming_classifier.classify(image_paths, batch_size=BATCH) if p.error is None)

    assert benchmark.pedantic(classify_all, rounds=3, warmup_rounds=1) == len(image_paths)


def test_medclf_folder_int8(benchmark, image_paths):
    """The same folder served by the packaged INT8 file, which passed verification (99.6% agreement with FP32 on
    1,024 held-out cell images, 99.4% on TEST): what a user who opts in with ``--model model.int8.onnx`` gets."""
    from medclf.runtime import DEFAULT_MODEL, Classifier

    int8 = Classifier(DEFAULT_MODEL.with_name("model.int8.onnx"), streaming=True)

    def classify_all() -> int:
        return sum(1 for p in int8.classify(image_paths, batch_size=BATCH) if p.error is None)

    assert benchmark.pedantic(classify_all, rounds=3, warmup_rounds=1) == len(image_paths)


def test_bound_decode_only(benchmark, classifier, image_paths):
    benchmark.pedantic(lambda: sum(1 for _ in decoded(image_paths, classifier.card.preprocess)), rounds=3,
                       warmup_rounds=1)


def test_decode_in_processes(benchmark, classifier, image_paths):
    """The same decoding in worker processes (their server started by the warm-up round, as it is once per
    process): level with threads on two cores, 3.5x them on sixteen (README)."""
    def decode_all() -> int:
        return sum(1 for _ in decoded(image_paths, classifier.card.preprocess, processes=True))

    benchmark.pedantic(decode_all, rounds=3, warmup_rounds=1)


def test_bound_inference_only(benchmark, classifier, images):
    benchmark.pedantic(classifier.predict, args=(images,), kwargs={"batch_size": BATCH}, rounds=3, warmup_rounds=1)


def test_keras_folder(benchmark, keras_model, folder, classifier):
    import keras

    size = (classifier.card.preprocess.height, classifier.card.preprocess.width)

    def predict_folder():
        dataset = keras.utils.image_dataset_from_directory(folder, image_size=size, batch_size=BATCH, shuffle=False,
                                                           verbose=False)
        return keras_model.predict(dataset, verbose=0)

    benchmark.pedantic(predict_folder, rounds=3, warmup_rounds=1)  # first rounds are slow (tracing): 1.3-2.6 s
