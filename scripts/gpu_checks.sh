#!/usr/bin/env bash
# The checks only a GPU machine can run, in one go: the GPU backend tests, the GPU benchmarks (CUDA EP FP32 and
# FP16 vs the CPU at batch 1 and 64, the host-to-device copy and decoding timed alone) and medclf-run's backend
# choice, one-shot and over a folder. Needs onnxruntime-gpu (and TensorRT, where NVIDIA's index is reachable).
# Usage: OUT=DIR MEDCLF_SHARED=DIR [MEDCLF_FP16_MODEL=FILE] [MEDCLF_GPU_MODELS="MODEL=FOLDER ..."] \
#        bash scripts/gpu_checks.sh
# MEDCLF_GPU_MODELS: more model files to compare on the GPU with the CPU, each on a folder of its own kind of images
# (scripts/gpu_agreement.py; the packaged FP32 and INT8 files are always compared, on blood-cell TEST).
# Results under $OUT: gpu.txt, tests.log, bench.json, bench.log, cli.log, benchmark-{cuda,cpu}.json.
# medclf must be importable from the repository root (pip install --no-deps -e .). On a bare GPU machine without
# pip access, copying runtime/ export/ train/ into medclf/ does the same for these checks (how the H200 ran them).
set -uo pipefail  # not -e: every check runs; the exit status says whether any failed (rc below)
OUT=$(realpath -m "${OUT:-out}")  # the caller's relative paths, before the cd
MEDCLF_SHARED=$(realpath -m "${MEDCLF_SHARED:-$(dirname "$0")/../../shared}")
cd "$(dirname "$0")/.."
rc=0
PY=${PYTHON:-python3}
mkdir -p "$OUT"
$PY -c "import medclf.runtime" || { echo "medclf.runtime is not importable: see the header of $0" >&2; exit 2; }
export PYTHONUNBUFFERED=1
IMAGES="$MEDCLF_SHARED/data/blood-cells/TEST"

{
    fail=0  # each group below ends with its own status: `{ ...; } | tee` has only the group's last command's
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    $PY -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    # TF32: does the CUDA EP's default (TF32 convolutions on Ampere and later) keep FP32's 1e-4 tolerance?
    # (medclf's setting, TF32 off, is what gpu_agreement.py below compares for every file)
    $PY - <<'EOF'
import numpy as np, onnxruntime as ort, os
from medclf.runtime import DEFAULT_MODEL, Classifier, load_image
from pathlib import Path
cpu = Classifier(DEFAULT_MODEL)
paths = sorted(Path(os.environ.get("MEDCLF_SHARED", "../shared"), "data/blood-cells/TEST").glob("*/*.jpeg"))
images = np.stack([load_image(p, cpu.card.preprocess) for p in paths])
want = cpu.predict(images)
ort.preload_dlls()
session = ort.InferenceSession(str(DEFAULT_MODEL), providers=[("CUDAExecutionProvider", {"use_tf32": "1"})])
got = session.run(["probabilities"], {"image": images})[0]
print(f"use_tf32=1: max |dp| vs CPU {np.abs(got - want).max():.2e} over {len(images)} images, "
      f"top-1 agreement {(got.argmax(1) == want.argmax(1)).mean():.2%}")
EOF
    [ $? = 0 ] || fail=1
    PACKAGED=runtime/models/blood_cells
    $PY scripts/gpu_agreement.py "$PACKAGED/model.onnx=$IMAGES" "$PACKAGED/model.int8.onnx=$IMAGES" \
        ${MEDCLF_FP16_MODEL:+"$MEDCLF_FP16_MODEL=$IMAGES"} ${MEDCLF_GPU_MODELS:-} || fail=1
    [ "$fail" = 0 ]
} 2>&1 | tee "$OUT/gpu.txt" || rc=1

$PY -m pytest -p no:cacheprovider -v -rs tests/runtime/test_backends.py tests/runtime/test_tensorrt_engine.py \
    tests/runtime/test_classifier.py 2>&1 | tee "$OUT/tests.log" || rc=1

$PY -m pytest -p no:cacheprovider -rs benchmarks/test_gpu.py benchmarks/test_latency.py benchmarks/test_throughput.py \
    -k "not keras and not folder and not inference_only" \
    --benchmark-only --benchmark-json="$OUT/bench.json" --benchmark-columns=min,median,mean,rounds 2>&1 \
    | tee "$OUT/bench.log" || rc=1

TIMEFORMAT="wall %R s"
{
    fail=0
    # The TensorRT backends must start where TensorRT is installed; elsewhere their one-line refusal is the check.
    required="auto cuda cpu"
    $PY -c "import tensorrt" 2>/dev/null && required="$required ort-tensorrt tensorrt"
    one=$(ls "$IMAGES"/*/*.jpeg | head -1)
    for backend in auto cuda cpu ort-tensorrt tensorrt; do
        echo "== medclf-run --backend $backend ONE_IMAGE"
        time $PY -m medclf.runtime.cli --backend "$backend" "$one"
        status=$?
        echo "exit $status"
        [[ $status != 0 && " $required " == *" $backend "* ]] && fail=1
    done
    for backend in auto cuda cpu; do
        echo "== medclf-run --backend $backend --json FOLDER ($(ls "$IMAGES"/*/*.jpeg | wc -l) images)"
        time $PY -m medclf.runtime.cli --backend "$backend" --json "$IMAGES" | tail -1 || fail=1  # auto: says which
    done
    for backend in cuda cpu; do  # the packaged file alone, as a GPU user would measure it (no TensorFlow)
        echo "== medclf benchmark MODEL.onnx --backend $backend"
        $PY -m medclf.train.cli benchmark runtime/models/blood_cells/model.onnx --data "$IMAGES" \
            --backend "$backend" --json-out "$OUT/benchmark-$backend.json" || fail=1
    done
    [ "$fail" = 0 ]
} 2>&1 | tee "$OUT/cli.log" || rc=1
exit $rc
