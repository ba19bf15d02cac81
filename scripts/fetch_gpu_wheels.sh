#!/usr/bin/env bash
# Download, on a machine with network, the wheels the GPU machine lacks into wheels/gpu/
# (git-ignored): Python 3.12, manylinux x86_64. The GPU image already has PyTorch with CUDA,
# torchvision, NumPy, ONNX, ONNX Runtime, pandas, SymPy, NVML, pytest and pytest-timeout, so
# those are not fetched; scripts/gpu_check.sh installs these wheels there with no network.
#
#   scripts/fetch_gpu_wheels.sh            # then carry wheels/gpu to the GPU machine
#
# Each wheel is fetched without its dependencies (pip would pull torch and NumPy); the check at
# the end lists any dependency that is neither fetched nor in the GPU image.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=wheels/gpu
python=${PYTHON:-python3}
# What the project imports and the GPU image lacks, with what those need in turn.
wanted=(
  "optuna>=4.2" alembic mako colorlog "sqlalchemy>=2.0" greenlet
  "mlcommons-loadgen>=4.1" "onnx2torch>=1.5"
)
# Distributions the GPU image has (device notes, 2026-11): a fetched wheel may depend on these.
image_has=(
  numpy onnx onnxruntime torch torchvision pandas sympy packaging tqdm pyyaml
  typing-extensions markupsafe jinja2 protobuf ml-dtypes python-dateutil six pytest
  pytest-timeout nvidia-ml-py filelock pillow matplotlib tomli
)
platforms=(
  manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
  manylinux1_x86_64
)

rm -rf "$dest"
mkdir -p "$dest"
echo "fetch_gpu_wheels: downloading ${#wanted[@]} distributions for cp312 manylinux x86_64" >&2
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  "${platforms[@]/#/--platform=}" --platform any -d "$dest" "${wanted[@]}"

# Every fetched wheel's requirements (markers for CPython 3.12 on x86_64 Linux) must be fetched
# or in the image; two versions of one distribution would stop the install there.
"$python" - "$dest" "${image_has[@]}" <<'PY'
import re
import sys
import zipfile
from pathlib import Path

from pip._vendor.packaging.markers import Marker
from pip._vendor.packaging.requirements import Requirement

folder, image = Path(sys.argv[1]), set(sys.argv[2:])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
env = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
    "extra": "",
}
wheels = sorted(folder.glob("*.whl"))
fetched: dict[str, str] = {}
for wheel in wheels:
    name = norm(wheel.name.split("-")[0])
    if name in fetched:
        sys.exit(f"fetch_gpu_wheels: two versions of {name}: {fetched[name]} and {wheel.name}")
    fetched[name] = wheel.name
have = {norm(n) for n in image} | set(fetched)
missing = []
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not Marker(str(req.marker)).evaluate(env):
            continue
        if norm(req.name) not in have:
            missing.append(f"{req} (needed by {wheel.name})")
if missing:
    sys.exit("fetch_gpu_wheels: neither fetched nor in the GPU image:\n  " + "\n  ".join(missing))
for wheel in wheels:
    print(f"  {wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
PY
# pip itself agrees that the set installs on CPython 3.12 (tags and platforms), as it will there.
"$python" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  "${platforms[@]/#/--platform=}" --platform any --target "$(mktemp -d)" "$dest"/*.whl
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "fetch_gpu_wheels: $(find "$dest" -name '*.whl' | wc -l) wheels, $((total / 1024)) KiB in $dest" \
  "(carry limit 64 MiB with the working tree)"
