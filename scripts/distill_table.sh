#!/usr/bin/env bash
# The table of docs/distillation.md: 1000 samples of the teacher (its own
# samplers) and of the consistency-distilled student (1, 2, 4 steps), from the
# same seed, each scored by both meters (FD-fmnist and the independent network).
#
#   bash scripts/distill_table.sh [TEACHER_WORKDIR] [STUDENT_WORKDIR]
#   STUDENT_ONLY=1 bash scripts/distill_table.sh ...   # keep the teacher rows already scored
#
# Needs the two feature networks (docs/evaluation.md): runs/classifier_fashion_mnist
# and runs/classifier_independent. Writes STUDENT/eval_<row>.json and prints a table.
set -euo pipefail
PY=${PY:-.venv/bin/python}
TEACHER=${1:-runs/ddpm_fashion_mnist}
STUDENT=${2:-runs/distill_fashion_mnist}
CT=configs/ddpm_fashion_mnist.py
CS=configs/distill_fashion_mnist.py
NUM="--config.sample.num=1000 --config.sample.batch_size=250"
EVAL="--classifier_workdir runs/classifier_fashion_mnist --independent_workdir runs/classifier_independent"

row() {  # name config workdir [flags...]
  local name=$1 config=$2 workdir=$3
  shift 3
  local stem
  stem=$($PY -m launch --mode sample --config "$config" --workdir "$workdir" $NUM "$@" \
         | sed -n 's/^wrote [0-9]* samples: \(.*\)\.png, .*/\1/p')
  $PY -m launch.eval.evaluate --npz "$stem.npz" $EVAL --out "$STUDENT/eval_$name.json" > /dev/null
  $PY -c "import sys, numpy as np; from PIL import Image; from core import images as im
x = np.load(sys.argv[1])['images'][:100]
Image.fromarray(np.squeeze(im.image_grid(x, nrow=10))).save(sys.argv[2])" "$stem.npz" "$STUDENT/grid_$name.png"
  echo "$name $stem"
}

if [ "${STUDENT_ONLY:-0}" != 1 ]; then
row teacher_sde20 $CT "$TEACHER" --config.sample.sampler=dpmpp_2m_sde --config.sample.steps=20
row teacher_dpmpp20 $CT "$TEACHER" --config.sample.sampler=dpmpp_2m --config.sample.steps=20
row teacher_ddim100 $CT "$TEACHER" --config.sample.sampler=ddim --config.sample.steps=100
row teacher_dpmpp4 $CT "$TEACHER" --config.sample.sampler=dpmpp_2m --config.sample.steps=4
row teacher_ddim4 $CT "$TEACHER" --config.sample.sampler=ddim --config.sample.steps=4
row teacher_ddim1 $CT "$TEACHER" --config.sample.sampler=ddim --config.sample.steps=1
fi
for k in 1 2 4; do
  row student_consistency$k $CS "$STUDENT" --config.distill.teacher_workdir="$TEACHER" \
      --config.sample.steps=$k
done

$PY - "$STUDENT" <<'PY'
import json, pathlib, sys
rows = sorted(pathlib.Path(sys.argv[1]).glob("eval_*.json"))
print("| row | FD-fmnist | entropy | fd_independent | entropy (indep.) |")
print("| --- | --- | --- | --- | --- |")
for path in rows:
  records = {r["metric"]: r["value"] for r in json.loads(path.read_text())}
  print(f"| {path.stem[5:]} | {records['fd_fmnist']:.2f} | {records['class_histogram']:.3f} | "
        f"{records['fd_independent']:.2f} | {records['entropy_independent']:.3f} |")
PY
