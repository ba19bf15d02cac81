#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU and no network, from the repository root:
# install the wheels scripts/fetch_gpu_wheels.sh put in wheels/gpu, print nvidia-smi, run the
# tests marked `gpu`, one harness run with CUDA graphs, then a short torch-backend tuning run
# on CUDA and the export of its best trial.
# Expected: about 5 minutes on one H200; the steps' time limits add up to under 8 minutes.
#
#   scripts/gpu_check.sh                     # on the GPU machine (wheels/gpu carried along)
#   GPU_CHECK_OUT=dir scripts/gpu_check.sh   # also copy the study's report and export there
#   PYTHON=.venv/bin/python scripts/gpu_check.sh --cpu-rehearsal
#                                            # anywhere: the same steps on the CPU, tiny model,
#                                            # no wheel install (the interpreter has everything)
#
# The GPU image's python3 is itself a virtual environment holding PyTorch, so a venv made from
# it would not see torch: the wheels go to a --target folder on PYTHONPATH instead.
set -euo pipefail
cd "$(dirname "$0")/.."

rehearsal=0
case "${1:-}" in
  "") ;;
  --cpu-rehearsal) rehearsal=1 ;;
  *) echo "usage: $0 [--cpu-rehearsal]" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
trials=${GPU_CHECK_TRIALS:-6}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
site=$work/site
export PYTHONUNBUFFERED=1
failed=()

step() { printf '\n=== gpu_check: %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
fail() { echo "gpu_check: FAILED: $1" >&2; failed+=("$1"); }

step "install the project's wheels from wheels/gpu (no network)"
if [ "$rehearsal" -eq 1 ]; then
  echo "rehearsal: no install; $python must already have the project's dependencies"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  if ! compgen -G "wheels/gpu/*.whl" >/dev/null; then
    echo "gpu_check: no wheels in wheels/gpu: run scripts/fetch_gpu_wheels.sh where there is" \
      "network and carry wheels/gpu here" >&2
    exit 1
  fi
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$site" wheels/gpu/*.whl
  export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" - <<'PY'
import importlib.metadata as md

import torch

import harness  # noqa: F401
import tuner  # noqa: F401

names = ("torch", "torchvision", "onnx2torch", "onnx", "onnxruntime", "optuna",
         "mlcommons-loadgen", "sqlalchemy", "numpy")
print("  ".join(f"{n} {md.version(n)}" for n in names))
print(f"CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
PY

if [ "$rehearsal" -eq 1 ]; then
  device=cpu model=tiny precisions=fp32 batches=1,4,16 duration=0.5
else
  step "nvidia-smi"
  if ! nvidia-smi; then
    echo "gpu_check: nvidia-smi failed: no NVIDIA GPU or driver here" >&2
    exit 1
  fi
  device=cuda model=resnet50 precisions=fp32,fp16,bf16 batches=8,32,128 duration=2
fi

step "pytest -m gpu"
if ! timeout 150 "$python" -m pytest -m gpu -q -p no:cacheprovider tests; then
  fail "pytest -m gpu"
fi

if [ "$rehearsal" -eq 0 ]; then
  step "one harness run with CUDA graphs: resnet50 fp16, batch 64, 2 streams, Offline"
  if ! timeout 90 "$python" -m harness run --backend torch --device cuda --model resnet50 \
    --precision fp16 --batch-size 64 --streams 2 --backend-option cuda_graphs=true \
    --scenario offline --duration-s 2 --cache-dir "$work/cache" --out "$work/graphs-run" \
    --json "$work/graphs.json"; then
    fail "harness run with cuda_graphs"
  fi
fi

step "tune: $model, torch backend on $device, Offline, $trials trials"
storage="sqlite:///$work/gpu-check.db"
if ! timeout 210 "$python" -m tuner optimize --backend torch --device "$device" \
  --model "$model" --scenario offline --precisions "$precisions" --batch-sizes "$batches" \
  --streams 1,2 --trials "$trials" --duration-s "$duration" --trial-timeout 120 \
  --timeout 150 --confirm-top 2 --confirm-runs 1 --study gpu-check --storage "$storage" \
  --cache-dir "$work/cache" --runs-dir "$work/runs"; then
  fail "tuner optimize"
fi

step "report and export of the best trial"
if "$python" -m tuner report --study gpu-check --storage "$storage" --out "$work/report" &&
  "$python" -m tuner export --study gpu-check --storage "$storage" --format json \
    --out "$work/best.json"; then
  "$python" - "$work/best.json" <<'PY'
import json
import sys

trial = json.load(open(sys.argv[1]))["trial"]
attrs = trial["user_attrs"]
print(f"best: trial {trial['number']}, {trial['params']}, {trial['value']:,.1f} samples/s "
      f"(median of the confirmation runs {attrs.get('confirm_scores')}), on {attrs['device']}")
print(f"  agreement with fp32: top-1 {attrs.get('agreement_top1')}, max abs error "
      f"{attrs.get('agreement_max_abs_error')}; p99 {attrs.get('p99_ms')} ms; "
      f"versions {attrs.get('versions')}")
PY
  if [ -n "${GPU_CHECK_OUT:-}" ]; then
    mkdir -p "$GPU_CHECK_OUT"
    cp "$work/best.json" "$work/report/trials.csv" "$GPU_CHECK_OUT"/ 2>/dev/null || true
  fi
else
  fail "report/export"
fi

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "gpu_check: ${#failed[@]} step(s) failed: ${failed[*]} (files in $work)" >&2
  exit 1
fi
echo "gpu_check: all steps passed (files in $work)"
