"""Which CPU this is, as far as INT8 and FP16 files are concerned.

An INT8 file's agreement with its model depends on the CPU that runs it. x86 CPUs with int8 dot-product
instructions (VNNI) multiply onnxruntime's U8S8 QDQ files exactly; without them onnxruntime uses AVX2's
``vpmaddubsw``, whose 16-bit sums can saturate (onnxruntime's quantization guide warns of it). Measured with the
packaged blood-cell model's INT8 file against its FP32 one, 512 TEST images: 97.1% agreement on an AVX-512 VNNI
EPYC, 93-94% on an AVX2-only one. So export records the CPU it verified on, and the runtime says when it serves
a file verified with VNNI on a CPU without it.

An FP16 file costs speed on an x86 CPU: onnxruntime has no float16 convolutions there and computes the file in
float32 between casts — a 128-px MobileNetV2 at 405 images/s against its FP32 file's 854 (batch 32; 362 vs 685
at batch 1) on an Intel Xeon that has AVX-512 FP16 instructions. So the runtime says so when it serves one there.
"""

from __future__ import annotations

import functools
import platform

from .modelcard import ModelCard

VERIFIED_ON = "int8_verified_on"  # the model card's metrics key: this_cpu() of the exporting machine


def this_cpu() -> dict[str, object]:
    """``{"name": ..., "int8_dot_product": True | False | None}`` (None: the CPU's flags could not be read)."""
    name, dot_product = _read_cpu()
    return {"name": name, "int8_dot_product": dot_product}


def cpu_signature() -> str:
    """This CPU's name and instruction-set flags, in one string: what a graph optimized for it depends on."""
    name, flags = _cpu_flags()
    return f"{name} {' '.join(sorted(flags))}"


def _read_cpu() -> tuple[str, bool | None]:
    name, flags = _cpu_flags()
    # x86: avx512_vnni / avx_vnni; ARM (Jetson Orin's Cortex-A78AE among them): asimddp, exact int8 dot products too
    dot_product = any("vnni" in flag for flag in flags) or "asimddp" in flags
    return name, dot_product if flags else None


@functools.cache
def _cpu_flags() -> tuple[str, frozenset[str]]:
    """The first processor's name and flags from /proc/cpuinfo, read once per process and only up to the end of
    that processor's entry (the whole file, one entry per core, takes milliseconds to make on big machines)."""
    flags, name = frozenset(), platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = frozenset(value.split())
                elif not line.strip() and flags:
                    break
    except OSError:
        pass
    return name, flags


def int8_caveat(card: ModelCard, model: str, backend: str, cpu: dict[str, object] | None = None) -> str:
    """One line when an INT8 file verified on a CPU with int8 dot products is served by onnxruntime on one
    without them (``cpu``: this CPU, default :func:`this_cpu`); else ""."""
    verified = card.metrics.get(VERIFIED_ON) or {}
    if card.precision != "int8" or backend != "cpu" or verified.get("int8_dot_product") is not True:
        return ""
    cpu = this_cpu() if cpu is None else cpu
    if cpu["int8_dot_product"] is not False:
        return ""
    return (f"{model}: this INT8 file was verified on a CPU with int8 dot products (VNNI, {verified['name']}); "
            f"this CPU ({cpu['name']}) has none and can agree less with the original model (3-6 points measured): "
            f"check it here with `medclf benchmark`, or serve the FP32 file")


def fp16_caveat(card: ModelCard, model: str, backend: str, machine: str | None = None) -> str:
    """One line when a float16 file is served by onnxruntime on an x86 CPU (``machine``: this one's, default
    ``platform.machine()``), where it runs at about half its FP32 file's speed; else "". (ARM CPUs with
    float16 arithmetic, a Jetson's among them, have onnxruntime kernels of their own: not measured here.)"""
    machine = platform.machine() if machine is None else machine
    if card.precision != "fp16" or backend != "cpu" or machine.lower() not in ("x86_64", "amd64"):
        return ""
    return (f"{model}: a float16 file on this x86 CPU, which onnxruntime computes in float32 between casts, at "
            f"about half the FP32 file's speed; float16 pays on GPUs: on CPUs serve the FP32 (or INT8) file")
