#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md, as one script (about 5-8 minutes on one
# H100 or H200, compilation included):
#   1. configs/ddpm_cifar10.py, the DDPM paper's 35.7M CIFAR-10 UNet: the train
#      step at batch 128 in float32 and bfloat16 (steps/s; FLOPs from XLA's
#      cost analysis; MFU against the chip's spec-sheet peak and the measured
#      matmul peak), and the 1000-step ancestral chain at batch 256;
#   2. configs/ddpm_released.py:church, the released 256x256 config (113.7M):
#      its train step at batch 16 in bfloat16.
# Then a summary (OUT/gpu_check.json and a table).
#
#   bash scripts/gpu_check.sh OUT_DIR
#   TINY=1 bash scripts/gpu_check.sh OUT_DIR   # the :smoke configs at tiny sizes (a CPU test)
set -euo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT_DIR}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
if [ "${TINY:-0}" = 1 ]; then
  CIFAR=configs/ddpm_cifar10.py:smoke; RELEASED=configs/ddpm_released.py:smoke
  SIZES="--config.bench.batch_size=4 --config.bench.sample_batch=4 --config.bench.sample_steps=3"
  BIG="--config.bench.batch_size=2"
  REPEATS="--config.bench.repeats=2 --config.bench.warmup=1 --config.bench.matmul_size=256"
else
  CIFAR=configs/ddpm_cifar10.py; RELEASED=configs/ddpm_released.py:church
  SIZES="--config.bench.batch_size=128 --config.bench.sample_batch=256 --config.bench.sample_steps=0"
  BIG="--config.bench.batch_size=16"
  REPEATS="--config.bench.repeats=5 --config.bench.warmup=2 --config.bench.matmul_size=8192"
fi
start=$(date +%s)
$PY -m launch --mode bench --config $CIFAR --workdir "$OUT/cifar10" $SIZES $REPEATS \
    --config.bench.dtypes=float32,bfloat16 --config.bench.ddim_steps=0 > "$OUT/cifar10.txt"
$PY -m launch --mode bench --config $RELEASED --workdir "$OUT/released256" $BIG $REPEATS \
    --config.bench.dtypes=bfloat16 --config.bench.sample_batch=2 --config.bench.sample_steps=1 \
    --config.bench.ddim_steps=0 > "$OUT/released256.txt"
$PY -m launch.bench_summary "$OUT" --wall_s $(( $(date +%s) - start ))
