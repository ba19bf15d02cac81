"""Whether this machine has an NVIDIA GPU for the `gpu` tests, asked of the driver: NVML
(nvidia-ml-py, through harness.gpus.discover) where it imports, else `nvidia-smi -L`. Never
torch: a GPU host without the torch extra, or with a CPU build of torch, still runs its
TensorRT and NVML tests; each of those skips on its own for the piece it lacks."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

NO_GPU = "needs an NVIDIA GPU"


def gpu_missing(path: str | None = None, nvml: bool | None = None) -> str | None:
    """Why no NVIDIA GPU is usable here (a line starting with NO_GPU), or None when the driver
    lists one. `path` is where to look for nvidia-smi (None: PATH); `nvml` whether to ask NVML
    (None: where nvidia-ml-py imports)."""
    if nvml is None:
        nvml = importlib.util.find_spec("pynvml") is not None
    if nvml:
        from harness.gpus import discover

        found = discover()
        return None if found.gpus else f"{NO_GPU}: {found.reason}"
    smi = shutil.which("nvidia-smi", path=path)
    if smi is None:
        return f"{NO_GPU}: none here (no nvidia-smi, and nvidia-ml-py is not installed)"
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{NO_GPU}: nvidia-smi -L failed ({exc})"
    if listed.returncode == 0 and any(
        line.startswith("GPU ") for line in listed.stdout.splitlines()
    ):
        return None
    said = " ".join((listed.stderr or listed.stdout).split())[:200]
    return f"{NO_GPU}: nvidia-smi -L lists none (exit {listed.returncode}: {said or 'no output'})"
