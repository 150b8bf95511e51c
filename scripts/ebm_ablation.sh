#!/usr/bin/env bash
# The EBM ablation of issue 16, item 3: each IGEBM / Improved CD option of
# configs/ebm_fashion_mnist.py trained for the same wall-clock budget, then
# scored by `--mode evaluate` (FD-fmnist and the class-histogram entropy of
# samples from noise, next to the OOD AUROCs), and one table of the results.
#
#   scripts/ebm_ablation.sh                 # every variant, one after another
#   scripts/ebm_ablation.sh baseline kl     # only these
#   DRY_RUN=1 scripts/ebm_ablation.sh       # print the commands, run nothing
#
# Environment: BUDGET_S (seconds of training loop per variant, default 1800 =
# the issue's 30 CPU minutes), RUNS (default runs/ebm_ablation), CLASSIFIER
# (the feature network's workdir, default runs/classifier_fashion_mnist;
# `python -m launch --config configs/classifier_fashion_mnist.py --workdir
# runs/classifier_fashion_mnist` trains it), INDEPENDENT (the second meter,
# docs/evaluation.md, default runs/classifier_independent, trained by
# configs/classifier_fashion_mnist.py:independent), PYTHON (default python).
#
# Equal budget: train.time_budget_s stops the loop after BUDGET_S seconds of
# wall time (train.steps is set far beyond reach, so the budget is what
# binds; train.sample_every=0 keeps sample grids out of the budget). Run the
# variants one at a time on a quiet machine with the same cores, or the
# budget measures the neighbours. A variant's training runs once: its
# workdir gets an `ablation_trained` marker, and a rerun only evaluates it (a
# workdir with checkpoints but no marker is an interrupted run: the script
# stops rather than give it a second budget; delete it to start over).
#
# Variants (the options are documented in ebm/cd.py and configs/base.py):
#   baseline      the tutorial's persistent recipe (buffer, 5% restarts, 128
#                 chains of 60 steps; samples from noise of 256 steps)
#   sn            spectral normalisation of every kernel (IGEBM)
#   augment       ICD's augmented buffer restarts: shift <= 2 px and noise
#                 0.01 (no flips: Fashion-MNIST's shoes all face left)
#   kl            ICD's KL term through the last Langevin step (weight 1)
#                 and its nearest-neighbour entropy (0.3), on 32 chains as
#                 ICD does on MNIST
#   anneal        step size 10 -> 1 and noise 0.005 -> 0.0005, geometric,
#                 over every chain (training and sampling)
#   short_chains  more, shorter chains at the same number of energy
#                 gradients per step: 256 chains of 30 steps
#   short_run     non-persistent short-run MCMC (Nijkamp et al. 2019): every
#                 training chain starts from noise (reinit 1.0, 60 steps),
#                 samples from noise run 80 steps; today's default
#   jem           JEM: 10 class energies, per-class persistent buffer,
#                 cross-entropy weight 1
#   jem_short_run JEM on short-run chains; today's :conditional
#   all           the persistent-recipe options above together
# Every variant but short_run and jem_short_run pins the tutorial's persistent
# buffer ($P below), the default before short_run won.
# A further variant is one more line in VARIANTS below: `[name]="key=value ..."`
# with config keys of configs/ebm_fashion_mnist.py (e.g. the class-conditional
# keys of the JEM recipe).
set -euo pipefail

cd "$(dirname "$0")/.."
BUDGET_S=${BUDGET_S:-1800}
RUNS=${RUNS:-runs/ebm_ablation}
CLASSIFIER=${CLASSIFIER:-runs/classifier_fashion_mnist}
INDEPENDENT=${INDEPENDENT:-runs/classifier_independent}
PYTHON=${PYTHON:-python}
CONFIG=configs/ebm_fashion_mnist.py

# The tutorial's persistent recipe, the default before short_run won: a replay
# buffer with 5% restarts, samples from noise of 256 steps.
P="ebm.reinit_fraction=0.05 ebm.sample_steps=256"
S="ebm.reinit_fraction=1.0 ebm.sample_steps=80"      # short-run chains (today's default)
JEM="model.num_classes=10 ebm.conditional_sampling=true ebm.ce_weight=1.0"
SN="model.spectral_norm=true"
AUGMENT="ebm.augment_shift=2 ebm.augment_noise=0.01"
KL="ebm.kl_weight=1.0 ebm.entropy_weight=0.3 ebm.kl_chains=32"
ANNEAL="ebm.anneal=geometric ebm.step_size_final_factor=0.1 ebm.noise_final_factor=0.1"
SHORT_CHAINS="ebm.num_chains=256 ebm.langevin_steps=30"
declare -A VARIANTS=(
  [baseline]="$P"
  [sn]="$P $SN"
  [augment]="$P $AUGMENT"
  [kl]="$P $KL"
  [anneal]="$P $ANNEAL"
  [short_chains]="$P $SHORT_CHAINS"
  [short_run]="$S"
  [jem]="$P $JEM"
  [jem_short_run]="$S $JEM"
  [all]="$P $SN $AUGMENT $KL $ANNEAL $SHORT_CHAINS"
)
ORDER=(baseline sn augment kl anneal short_chains short_run jem jem_short_run all)

# What every variant shares: the budget binds, no grids inside it.
COMMON=(--config.train.time_budget_s="$BUDGET_S" --config.train.steps=1000000
        --config.train.sample_every=0)

run() {
  echo "+ $*"
  if [[ -z "${DRY_RUN:-}" ]]; then "$@"; fi
}

variants=("$@")
if [[ ${#variants[@]} -eq 0 ]]; then variants=("${ORDER[@]}"); fi
for v in "${variants[@]}"; do
  if [[ -z "${VARIANTS[$v]+set}" ]]; then
    echo "error: unknown variant '$v' (known: ${ORDER[*]})" >&2
    exit 2
  fi
done

for v in "${variants[@]}"; do
  workdir="$RUNS/$v"
  overrides=("${COMMON[@]}")
  for kv in ${VARIANTS[$v]}; do overrides+=("--config.$kv"); done
  if [[ -e "$workdir/ablation_trained" ]]; then
    echo "# $v: trained already ($workdir/ablation_trained); evaluating only"
  elif [[ -z "${DRY_RUN:-}" && -d "$workdir/checkpoints" ]]; then
    echo "error: $workdir has checkpoints but no ablation_trained marker (an interrupted" \
         "run); delete it to train $v again within one budget" >&2
    exit 1
  else
    run "$PYTHON" -m launch --config "$CONFIG" --workdir "$workdir" "${overrides[@]}"
    if [[ -z "${DRY_RUN:-}" ]]; then date -u +%FT%TZ > "$workdir/ablation_trained"; fi
  fi
  run "$PYTHON" -m launch --config "$CONFIG" --workdir "$workdir" --mode evaluate \
    "${overrides[@]}" --config.eval.classifier_workdir="$CLASSIFIER" \
    --config.eval.independent_workdir="$INDEPENDENT"
done

if [[ -n "${DRY_RUN:-}" ]]; then exit 0; fi
# The table: steps reached in the budget, both meters on samples from noise
# (a JEM's from its marginal E(x)), a JEM's class accuracy of class-cycling
# samples (both meters) and its test accuracy, the mean OOD AUROC.
"$PYTHON" - "$RUNS" "${variants[@]}" <<'EOF'
import json, pathlib, sys
runs, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
nan = float("nan")
print("| variant | steps | loop s | FD-fmnist ↓ | entropy ↑ | fd_independent ↓ | entropy (indep.) ↑ "
      "| class acc. (CNN / indep.) | JEM test acc. | OOD AUROC (mean) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name in names:
  records = json.loads((runs / name / "eval.json").read_text())
  def get(metric, protocol=None):
    hits = [r["value"] for r in records if r["metric"] == metric
            and (protocol is None or r.get("protocol") == protocol)]
    return hits[0] if hits else nan
  jem = any(r.get("protocol") == "marginal" for r in records)
  noise = "marginal" if jem else "config"   # samples from noise without a label
  lines = (runs / name / "metrics.jsonl").read_text().splitlines()
  last = json.loads(lines[-1]) if lines else {}
  ood = [r["value"] for r in records if r["metric"].startswith("ood_auroc_")]
  acc = (f"{get('class_accuracy', 'config'):.3f} / "
         f"{get('class_accuracy_independent', 'config'):.3f}") if jem else "–"
  test = f"{get('accuracy'):.3f}" if jem else "–"
  step = next((r["step"] for r in records if "step" in r), last.get("step", "?"))  # the checkpoint scored
  print(f"| {name} | {step} | {last.get('elapsed_s', nan):.0f} "
        f"| {get('fd_fmnist', noise):.2f} | {get('class_histogram', noise):.3f} "
        f"| {get('fd_independent', noise):.2f} | {get('entropy_independent', noise):.3f} "
        f"| {acc} | {test} | {sum(ood) / max(len(ood), 1):.3f} |")
EOF
