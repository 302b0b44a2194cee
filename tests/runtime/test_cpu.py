"""An INT8 file verified on a CPU with int8 dot products says so when a CPU without them serves it; an FP16 file
says so when an x86 CPU serves it."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from medclf.runtime import Preprocess
from medclf.runtime.cpu import VERIFIED_ON, fp16_caveat, int8_caveat, this_cpu
from medclf.runtime.modelcard import ModelCard

VNNI = {"name": "AVX-512 VNNI CPU", "int8_dot_product": True}
AVX2 = {"name": "AVX2 CPU", "int8_dot_product": False}
INT8 = ModelCard(labels=("a", "b"), preprocess=Preprocess(8, 8), precision="int8", metrics={VERIFIED_ON: VNNI})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_this_cpu_has_a_name_and_knows_whether_it_has_int8_dot_products():
    cpu = this_cpu()
    assert cpu["name"] and cpu["int8_dot_product"] in (True, False)


def test_a_vnni_verified_int8_file_served_on_a_cpu_without_vnni_gets_one_line_naming_the_file():
    line = int8_caveat(INT8, "models/model.int8.onnx", "cpu", cpu=AVX2)
    assert line.startswith("models/model.int8.onnx: this INT8 file was verified on a CPU with int8 dot products")
    assert "AVX2 CPU" in line and "medclf benchmark" in line and "\n" not in line


@pytest.mark.parametrize("card, backend, cpu", [
    (INT8, "cpu", VNNI),  # the kind of CPU it was verified on
    (INT8, "cuda", AVX2),  # the GPU runs it, not the CPU's kernels
    (INT8, "cpu", {"name": "?", "int8_dot_product": None}),  # flags unknown: no guess
    (dataclasses.replace(INT8, precision="fp32"), "cpu", AVX2),
    (dataclasses.replace(INT8, metrics={VERIFIED_ON: AVX2}), "cpu", AVX2),  # verified without VNNI: pessimistic
    (dataclasses.replace(INT8, metrics={}), "cpu", AVX2),  # exported before the CPU was recorded
])
def test_nothing_is_said_otherwise(card, backend, cpu):
    assert int8_caveat(card, "model.int8.onnx", backend, cpu=cpu) == ""


def test_an_fp16_file_served_by_an_x86_cpu_says_in_one_line_that_it_runs_slower_there_than_fp32():
    fp16 = dataclasses.replace(INT8, precision="fp16", metrics={})
    line = fp16_caveat(fp16, "exported/model.fp16.onnx", "cpu", machine="x86_64")
    assert line.startswith("exported/model.fp16.onnx: a float16 file on this x86 CPU") and "\n" not in line
    assert "half the FP32 file's speed" in line and "serve the FP32" in line
    assert fp16_caveat(fp16, "m.onnx", "cpu", machine="AMD64")  # Windows' name for it
    for card, backend, machine in ((fp16, "cuda", "x86_64"), (fp16, "cpu", "aarch64"), (INT8, "cpu", "x86_64")):
        assert fp16_caveat(card, "m.onnx", backend, machine=machine) == ""
