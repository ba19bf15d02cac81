"""The one parser of device strings (harness.device) and the refusals its callers word; the
CPU flags a benchmark file records."""

from __future__ import annotations

import pytest

from harness.backends.null import NullBackend
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.backends.pytorch import TorchBackend
from harness.backends.trt_engine import parse_cuda_device
from harness.device import (
    Device,
    cpu_flags,
    cpu_info,
    cuda_ordinal,
    parse_device,
    read_device,
)
from harness.errors import ConfigError
from harness.gpus import cuda_ordinal as gpus_cuda_ordinal

ACCEPTED = [
    ("cpu", Device("cpu", 0)),
    ("cuda", Device("cuda", 0)),
    ("cuda:0", Device("cuda", 0)),
    ("cuda:3", Device("cuda", 3)),
    ("cuda:12", Device("cuda", 12)),
]
REFUSED = [
    "",
    "CPU",
    "CUDA",
    "gpu",
    "tpu",
    "cpu:0",
    "cpu:",
    "cuda:",
    "cuda:x",
    "cuda:-1",
    "cuda:1.5",
    "cuda: 1",
    " cuda",
    "cudax",
    "cuda:0:1",
    "cuda:\u00b2",
    "cuda:\u0663",
]


@pytest.mark.parametrize(("text", "device"), ACCEPTED)
def test_accepted_devices(text: str, device: Device) -> None:
    assert read_device(text) == device == parse_device(text)
    kind, ordinal = parse_device(text)  # unpacks like the tuple the backends used
    assert (kind, ordinal) == (device.kind, device.ordinal)
    assert cuda_ordinal(text) == (device.ordinal if device.kind == "cuda" else None)


@pytest.mark.parametrize("text", REFUSED)
def test_refused_devices(text: str) -> None:
    assert read_device(text) is None
    assert cuda_ordinal(text) is None
    with pytest.raises(ConfigError) as info:
        parse_device(text)
    assert str(info.value) == f"device: {text!r} is not one of cpu, cuda, cuda:N"


@pytest.mark.parametrize("text", REFUSED)
def test_every_caller_refuses_the_same_strings_in_its_own_words(text: str) -> None:
    for backend in (OnnxRuntimeBackend, TorchBackend):
        with pytest.raises(ConfigError, match=r"is not one of cpu, cuda, cuda:N"):
            backend.precisions(text)
    with pytest.raises(ConfigError, match="backend null: device must be cpu, cuda or cuda:N"):
        NullBackend.precisions(text)
    with pytest.raises(ConfigError) as info:
        parse_cuda_device(text)
    assert str(info.value) == f"device: backend tensorrt runs on cuda or cuda:N, not {text!r}"


def test_callers_agree_on_the_accepted_strings() -> None:
    for text, device in ACCEPTED:
        for backend in (OnnxRuntimeBackend, TorchBackend, NullBackend):
            assert backend.precisions(text)
        assert gpus_cuda_ordinal(text) == cuda_ordinal(text)
        if device.kind == "cuda":
            assert parse_cuda_device(text) == device.ordinal
        else:
            with pytest.raises(ConfigError, match="tensorrt runs on cuda"):
                parse_cuda_device(text)


X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 ssse3 fma sse4_2 avx f16c avx2 avx512f avx512bw avx512vl avx512_vnni \
avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8 avx512_fp16 sha_ni
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes crc32 asimddp sve
CPU implementer\t: 0x41
"""


def test_cpu_flags_keep_the_ones_that_decide_the_kernels() -> None:
    assert cpu_flags(X86_CPUINFO) == [
        "amx_bf16",
        "amx_int8",
        "amx_tile",
        "avx",
        "avx2",
        "avx512_bf16",
        "avx512_fp16",
        "avx512_vnni",
        "avx512bw",
        "avx512f",
        "avx512vl",
        "avx_vnni",
        "f16c",
        "fma",
        "sse4_2",
    ]  # the first processor's line; sse, sha_ni and the like left out
    assert cpu_flags(ARM_CPUINFO) == ["asimd", "asimddp", "sve"]


def test_no_flags_line_is_unknown_not_none() -> None:
    assert cpu_flags("") is None
    assert cpu_flags("processor\t: 0\nmodel name\t: something\n") is None
    assert cpu_flags("flags\t\t: fpu vme de pse\n") == []  # listed, none of interest


def test_cpu_info_names_this_machine() -> None:
    info = cpu_info()
    assert set(info) == {"model", "flags"}
    assert isinstance(info["model"], str) and info["model"].endswith("cores)")
    flags = info["flags"]
    assert flags is None or (isinstance(flags, list) and flags == sorted(flags))
