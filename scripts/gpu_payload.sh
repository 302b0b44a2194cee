#!/usr/bin/env bash
# Packs what scripts/gpu_checks.sh needs on a bare GPU machine that reaches no package index and does not see
# ../shared: onnxruntime-gpu (CUDA 13 build) and simplejpeg for its Python 3.12, blood-cell TEST and the chest test
# films, an FP16 export of the packaged model and any extra ONNX files given (compared with the CPU on the chest
# films), with each FP16 file's float16-activation emulation (compared with CUDA: what export verifies). The
# whole is split into .gpu/p0, .gpu/p1, ... each small enough to travel beside the working tree in one call (64 MiB
# together), and .gpu/run.sh joins and installs them there and runs the checks.
# Usage: bash scripts/gpu_payload.sh [CHEST_MODEL.onnx ...]   (then one device call per part, run.sh with the last)
set -euo pipefail
models=()  # the caller's relative paths, resolved before the cd
for model in "$@"; do models+=("$(realpath "$model")"); done
SHARED=$(realpath "${MEDCLF_SHARED:-$(dirname "$0")/../../shared}")
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/.gpu/models" "$STAGE/.gpu/emulated" "$STAGE/.gpu/shared/data/blood-cells" \
    "$STAGE/.gpu/shared/data/chest-xray" .gpu
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$STAGE/wheels" onnxruntime-gpu==1.31.1 simplejpeg
# xz packs onnxruntime-gpu's CUDA library a fifth smaller than the wheel's zip: one call fewer.
mkdir "$STAGE/ort" && (cd "$STAGE/ort" && unzip -q "$STAGE"/wheels/onnxruntime_gpu-*.whl)
tar -cf - -C "$STAGE/ort" . | xz -T0 -6 > "$STAGE/.gpu/ortgpu.tar.xz"
cp "$STAGE"/wheels/simplejpeg-*.whl "$STAGE/.gpu/"

cp -r "$SHARED/data/blood-cells/TEST" "$STAGE/.gpu/shared/data/blood-cells/"
cp -r "$SHARED/data/chest-xray/test" "$STAGE/.gpu/shared/data/chest-xray/"
# FP16 as medclf export makes it (weights rounded compensated on training images), with the packaged model's card
$PY - "$STAGE/.gpu/models/blood.fp16.onnx" "$SHARED/data/blood-cells/TRAIN" <<'EOF'
import dataclasses
import sys
import onnx
from medclf.export.fp16 import Fp16Converter
from medclf.export.int8 import ImageCalibrationReader
from medclf.export.labelled_images import spread
from medclf.export.pipeline import CALIBRATION_IMAGES
from medclf.runtime import DEFAULT_MODEL, Classifier
from medclf.runtime.inputs import list_images
card = Classifier(DEFAULT_MODEL).card
train = list_images(sys.argv[2])
calibration = [train[i] for i in spread(len(train), CALIBRATION_IMAGES)]
model = Fp16Converter(ImageCalibrationReader(calibration, card.preprocess)).convert(DEFAULT_MODEL)
onnx.helper.set_model_props(model, dataclasses.replace(card, precision="fp16").to_metadata())
onnx.save(model, sys.argv[1])
EOF
for model in ${models[@]+"${models[@]}"}; do cp "$model" "$STAGE/.gpu/models/$(basename "$(dirname "$model")")_$(basename "$model")"; done
# every FP16 file's float16-activation emulation, which export verifies FP16 with (gpu_agreement.py compares CUDA)
$PY - "$STAGE/.gpu/emulated" "$STAGE"/.gpu/models/*.fp16.onnx <<'EOF'
import sys
from pathlib import Path
import onnx
from medclf.export.fp16 import with_float16_activations
for fp16 in sys.argv[2:]:
    onnx.save(with_float16_activations(onnx.load(fp16)), str(Path(sys.argv[1]) / Path(fp16).name))
EOF

tree=$(git ls-files -z | xargs -0 cat | wc -c)
part=$(( 64 * 1024 * 1024 - tree - 2 * 1024 * 1024 ))  # 2 MiB to spare for run.sh and untracked files
rm -f .gpu/p*
tar -cf - -C "$STAGE" .gpu | split -b "$part" -d -a 1 - .gpu/p
parts=$(ls .gpu/p* | sort | tr '\n' ' ')

cat > .gpu/run.sh <<EOF
#!/usr/bin/env bash
# On the GPU machine, from the repository root, once every part has been carried there.
set -u
T0=\$(date +%s)
cat $parts | tar -xf - -C /tmp || exit 3
mkdir -p /tmp/site && xz -dc -T0 /tmp/.gpu/ortgpu.tar.xz | tar -xf - -C /tmp/site || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/.gpu/simplejpeg-*.whl || exit 5
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/medclf && cp -r medclf/. /tmp/pkg/medclf/
cp -r runtime export train /tmp/pkg/medclf/
export PYTHONPATH=/tmp/pkg:/tmp/site MEDCLF_SHARED=/tmp/.gpu/shared
export MEDCLF_FP16_MODEL=/tmp/.gpu/models/blood.fp16.onnx MEDCLF_FP16_EMULATIONS=/tmp/.gpu/emulated
C=/tmp/.gpu/shared/data/chest-xray/test
MEDCLF_GPU_MODELS=""
for m in /tmp/.gpu/models/*.onnx; do [ "\$m" = "\$MEDCLF_FP16_MODEL" ] || MEDCLF_GPU_MODELS+="\$m=\$C "; done
export MEDCLF_GPU_MODELS
echo "setup \$(( \$(date +%s) - T0 )) s"
bash scripts/gpu_checks.sh
checks=\$?
echo "total \$(( \$(date +%s) - T0 )) s"
exit \$checks
EOF
echo "parts: $parts(at most $(( part / 1024 / 1024 )) MiB each, beside a $(( tree / 1024 / 1024 )) MiB tree)"
echo "device calls: one per part with carry [\".gpu/pK\"] (within the machine's idle time of each other), the last"
echo "also carrying .gpu/run.sh: set -o pipefail; bash .gpu/run.sh 2>&1 | tee \$OUT/run.log"
