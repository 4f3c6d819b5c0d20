#!/usr/bin/env bash
# Every method on the lab dataset (experiment=lab) with the same budget and seeds, a linear evaluation of
# each, and the report with baselines and learning curves: regenerates docs/results/lab.md (and its CSV and
# plots). About an hour on 2 CPU cores.
#   bash scripts/lab_results.sh [RUNS_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lab_results}
EPOCHS=30  # of experiment=lab's 100: 21 runs in an hour (SimCLR's 100-epoch run: docs/datasets/lab.md)
mkdir -p "$OUT"
for seed in 0 1 2; do
    for method in simclr dcl hcl moco mochi adco byol; do
        run="$OUT/${method}_s${seed}"
        python train.py experiment=lab method=$method seed=$seed trainer.max_epochs=$EPOCHS logger=csv \
            trainer.progress_bar=false run_dir="$run"
        python linear_eval.py ckpt="$run" protocol=default data=lab seed=$seed logger=csv \
            trainer.progress_bar=false run_dir="$run/linear"
    done
done
python -m cssl.report "$OUT" --out docs/results --name lab
