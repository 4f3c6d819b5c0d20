#!/usr/bin/env bash
# Low-label evaluation on the lab dataset: SimCLR, HCL, MoCo and BYOL pretrained (experiment=lab, 30 epochs,
# seeds 0-2), then a linear classifier and a fine-tuning of the whole network on 1% and 10% of the labelled
# images (the subset drawn with the run's seed), against fine-tuning from a random initialisation. Regenerates
# docs/results/lab_lowlabel.md (and its CSV and plots). About an hour on 2 CPU cores.
#   bash scripts/lab_lowlabel.sh [RUNS_FOLDER]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/lab_lowlabel}
EPOCHS=30  # of experiment=lab's 100, as scripts/lab_results.sh
# 1%: 20 images (2 a class), batches of 10 for 60 epochs; 10%: 200 images, batches of 32 for 30 epochs (the
# 60/30 epochs of SimCLR's 1%/10% fine-tuning; the default protocol's SGD otherwise, rate x batch/256)
budget() { if [ "$1" = 0.01 ]; then echo "data.batch_size=10 trainer.max_epochs=60"; else echo "data.batch_size=32 trainer.max_epochs=30"; fi; }
evaluate() {  # RUN_DIR OUT_DIR SEED FRACTION ARGS...
    local ckpt=$1 dir=$2 seed=$3 frac=$4; shift 4
    [ -f "$dir/summary.json" ] && return 0
    python linear_eval.py ckpt="$ckpt" data=lab data.label_fraction="$frac" $(budget "$frac") seed="$seed" \
        logger=csv trainer.progress_bar=false run_dir="$dir" "$@"
}
mkdir -p "$OUT"
for seed in 0 1 2; do
    for method in simclr hcl moco byol; do
        run="$OUT/${method}_s${seed}"
        [ -f "$run/summary.json" ] || python train.py experiment=lab method=$method seed=$seed \
            trainer.max_epochs=$EPOCHS logger=csv trainer.progress_bar=false run_dir="$run"
        for frac in 0.01 0.1; do
            evaluate "$run" "$run/linear_frac$frac" $seed $frac mode=linear
            evaluate "$run" "$run/finetune_frac$frac" $seed $frac mode=finetune
        done
    done
    for frac in 0.01 0.1; do  # the architecture of the runs (the checkpoint's weights are not used)
        evaluate "$OUT/simclr_s${seed}" "$OUT/random_init/s${seed}_frac$frac" $seed $frac mode=finetune init=random
    done
done
python -m cssl.report "$OUT" --out docs/results --name lab_lowlabel \
    --columns linear_top1_frac0.01,finetune_top1_frac0.01,linear_top1_frac0.1,finetune_top1_frac0.1,knn_top1
