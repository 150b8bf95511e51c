#!/usr/bin/env bash
# The DDPM recipe ablation of docs/ablation.md: each variant of the
# Fashion-MNIST default trained for the same number of steps (same network,
# so the same compute), then scored with the pinned protocol (DDIM eta 0,
# 100 steps, 1000 samples), DPM-Solver++(2M) 20 steps and SDE-DPM-Solver++(2M)
# 20 steps, FD-fmnist + class histogram, and the independent check
# (docs/evaluation.md); no bits/dim (eval.nll_images=0).
# Usage: bash scripts/ddpm_ablation.sh NAME STEPS [--config.key=value ...]
# Needs runs/classifier_fashion_mnist and runs/classifier_independent
# (docs/evaluation.md). Set EVAL_ONLY=1 to score an existing workdir, and
# ANCESTRAL=1 to score the 1000-step ancestral sampler too (slow: ~1000
# network calls per sample). CONFIG=path[:variant] picks another config.
# Results: runs/ablation/NAME/eval_dpmpp20.json (with the pinned protocol),
# eval_sde20.json, eval_ancestral.json and train_seconds.txt.
set -euo pipefail
name=$1; steps=$2; shift 2
overrides=(--config.train.steps="$steps" "$@")
cfg=${CONFIG:-configs/ddpm_fashion_mnist.py}
wd=runs/ablation/$name
py=${PY:-.venv/bin/python}
mkdir -p "$wd"
if [[ -z "${EVAL_ONLY:-}" ]]; then
  start=$(date +%s)
  $py -m launch --config "$cfg" --workdir "$wd" "${overrides[@]}" > "$wd/train.out" 2>&1
  echo $(( $(date +%s) - start )) > "$wd/train_seconds.txt"
fi
ev() {  # the sampler's overrides; tag names the output
  $py -m launch --config "$cfg" --workdir "$wd" --mode evaluate "${overrides[@]}" "$@" \
    --config.eval.classifier_workdir=runs/classifier_fashion_mnist --config.eval.num_samples=1000 \
    --config.eval.independent_workdir=runs/classifier_independent --config.eval.nll_images=0 \
    > "$wd/eval_$tag.out" 2>&1
  cp "$wd/eval.json" "$wd/eval_$tag.json"
}
# evaluate always adds the pinned protocol (DDIM eta 0, 100 steps) to the config's sampler
tag=dpmpp20 ev --config.sample.sampler=dpmpp_2m --config.sample.steps=20
tag=sde20 ev --config.sample.sampler=dpmpp_2m_sde --config.sample.steps=20
if [[ -n "${ANCESTRAL:-}" ]]; then
  tag=ancestral ev --config.sample.sampler=ancestral --config.sample.steps=0
fi
