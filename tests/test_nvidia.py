"""The `gpu` marker's check (tests/nvidia.py) asks the driver, not torch. nvidia-smi cannot run
on the CPU machines, so a script of that name on a private PATH stands in for it, saying what
the real one says with and without a GPU."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest

from tests.nvidia import NO_GPU, gpu_missing


def fake_smi(folder: Path, stdout: str, code: int = 0) -> str:
    """A folder holding an `nvidia-smi` that prints `stdout` and exits `code`; the folder."""
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{stdout}\nEOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(folder)


def test_a_gpu_that_nvidia_smi_lists_is_there(tmp_path: Path) -> None:
    listed = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1e0c39-7d3b-4f0e-9a55-2b8c1f1d0e77)"
    assert gpu_missing(fake_smi(tmp_path / "bin", listed), nvml=False) is None


@pytest.mark.parametrize(
    ("stdout", "code", "said"),
    [
        ("No devices were found", 6, "No devices were found"),
        (
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            9,
            "couldn't communicate with the NVIDIA driver",
        ),
        ("", 0, "no output"),
    ],
)
def test_nvidia_smi_without_a_gpu_gives_its_words_as_the_reason(
    tmp_path: Path, stdout: str, code: int, said: str
) -> None:
    reason = gpu_missing(fake_smi(tmp_path / "bin", stdout, code), nvml=False)
    assert reason is not None and reason.startswith(f"{NO_GPU}: nvidia-smi -L lists none")
    assert f"exit {code}" in reason and said in reason


def test_no_driver_tool_at_all_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    reason = gpu_missing(str(tmp_path / "empty"), nvml=False)
    assert reason == f"{NO_GPU}: none here (no nvidia-smi, and nvidia-ml-py is not installed)"


def test_nvml_is_asked_first_where_nvidia_ml_py_imports() -> None:
    if importlib.util.find_spec("pynvml") is not None:
        pytest.skip("nvidia-ml-py is installed here: NVML's answer depends on this machine")
    reason = gpu_missing(nvml=True)  # asked of NVML: the reason is discover()'s
    assert reason == f"{NO_GPU}: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
