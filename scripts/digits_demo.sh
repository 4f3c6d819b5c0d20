#!/usr/bin/env bash
# The six methods on digits with the same budget and seeds, a linear probe of each, and the report:
# regenerates docs/results/digits.md (and its CSV and plots). About 20 minutes on 2 CPU cores.
#   bash scripts/digits_demo.sh [RUNS_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/digits_demo}
COMMON=(logger=none trainer.progress_bar=false trainer.max_epochs=10 trainer.check_val_every_n_epoch=5)

python train.py -m method=simclr,dcl,hcl,moco,adco seed=0,1,2 "${COMMON[@]}" hydra.sweep.dir="$OUT/pretrain"
# MoChi mixes from epoch 2 of 10 (its default warm-up, 10 epochs, suits runs of hundreds of epochs)
python train.py -m method=mochi seed=0,1,2 method.mochi_warmup_epochs=2 "${COMMON[@]}" hydra.sweep.dir="$OUT/pretrain_mochi"
for run in "$OUT"/pretrain/*/ "$OUT"/pretrain_mochi/*/; do
    name=$(basename "$(dirname "$run")")_$(basename "$run")
    python linear_eval.py ckpt="$run" logger=none trainer.progress_bar=false run_dir="$OUT/linear/$name"
done
python -m cssl.report "$OUT" --out docs/results --name digits
