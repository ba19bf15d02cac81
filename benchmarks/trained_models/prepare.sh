#!/usr/bin/env bash
# Prepares the trained ONNX models and their input data (see README.md beside this script):
# a venv with pinned packages in OUT_DIR/.venv, two model wheels in OUT_DIR/wheels, then
# prepare.py writes OUT_DIR/models, OUT_DIR/data and OUT_DIR/manifest.json.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR    (e.g. $0 ~/.cache/batch-tuner/trained)" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"

python3.11 -m venv "$out/.venv"
# The versions the data and accuracies in README.md were made with.
"$out/.venv/bin/pip" install --quiet \
    numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0 pillow==13.0.0 magika==1.0.3
# Only the .onnx files inside these are needed: their dependencies (torch, opencv) are not.
"$out/.venv/bin/pip" download --quiet --no-deps --dest "$out/wheels" \
    silero-vad==6.2.3 rapidocr-onnxruntime==1.4.4

"$out/.venv/bin/python" "$here/prepare.py" --out "$out"
