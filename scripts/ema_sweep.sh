#!/usr/bin/env bash
# Post-hoc EMA sweep (docs/ablation.md): score one trained workdir with the
# EMA reconstructed at several widths sigma_rel (launch/posthoc_ema.py), no
# retraining. The workdir must have been trained with power-EMA snapshots:
#   python -m launch --config configs/ddpm_fashion_mnist.py --workdir WD \
#     --config.optim.power_ema_stds="(0.05,0.1)" --config.train.ema_snapshot_every=100
# Each width is scored as `--mode evaluate` scores the config: the config's
# sampler (SDE-DPM-Solver++(2M), 20 steps) and the pinned DDIM-100, 1000
# samples, FD-fmnist + class histogram and the independent check.
# Usage: bash scripts/ema_sweep.sh WD SIGMA... [-- --config.key=value ...]
#   (sigma 0 = the run's own EMA, optim.ema_decay)
# Needs runs/classifier_fashion_mnist and runs/classifier_independent.
# Results: WD/eval_ema<SIGMA>.json, and a summary table on stdout.
set -euo pipefail
wd=$1; shift
sigmas=()
while [[ $# -gt 0 && $1 != "--" ]]; do sigmas+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
cfg=${CONFIG:-configs/ddpm_fashion_mnist.py}
py=${PY:-.venv/bin/python}
for s in "${sigmas[@]}"; do
  $py -m launch --config "$cfg" --workdir "$wd" --mode evaluate "$@" \
    --config.optim.power_ema_stds="(0.05,0.1)" --config.train.ema_snapshot_every=100 \
    --config.sample.ema_sigma_rel="$s" \
    --config.eval.classifier_workdir=runs/classifier_fashion_mnist --config.eval.num_samples=1000 \
    --config.eval.independent_workdir=runs/classifier_independent --config.eval.nll_images=0 \
    > "$wd/eval_ema$s.out" 2>&1
  cp "$wd/eval.json" "$wd/eval_ema$s.json"
done
$py - "$wd" "${sigmas[@]}" <<'PY'
import json, sys
wd, sigmas = sys.argv[1], sys.argv[2:]
print("| sigma_rel | sampler | FD-fmnist | entropy | fd_independent | entropy (indep.) |")
print("| --- | --- | --- | --- | --- | --- |")
for s in sigmas:
  recs = json.load(open(f"{wd}/eval_ema{s}.json"))
  by = {}
  for r in recs:
    by.setdefault((r.get("sampler"), r.get("steps")), {})[r["metric"]] = r["value"]
  for (sampler, steps), m in sorted(by.items(), key=lambda kv: str(kv[0])):
    if "fd_fmnist" not in m:
      continue
    nan = float("nan")
    print(f"| {s} | {sampler}-{steps} | {m['fd_fmnist']:.2f} | {m.get('class_histogram', nan):.3f} "
          f"| {m.get('fd_independent', nan):.2f} | {m.get('entropy_independent', nan):.3f} |")
PY
