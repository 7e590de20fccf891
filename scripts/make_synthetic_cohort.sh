#!/usr/bin/env bash
# A synthetic stroke cohort in the raw layout (docs/data.md), then its preprocessing.
#
#   bash scripts/make_synthetic_cohort.sh                       # demo: 64 x 64, 16/4/4 patients
#   SIZE=paper N_TRAIN=571 N_VAL=81 N_TEST=165 WORKERS=8 bash scripts/make_synthetic_cohort.sh
#
# Writes $OUT/raw/{train,val,test[,clinical]} and $OUT/npy/{...}. At the demo size the in-plane
# voxel is 3.5 mm (the brain must fit 64 x 64); at paper size it is 1 x 1 x 5 mm.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${OUT:-data/synthetic}
SIZE=${SIZE:-demo}
SEED=${SEED:-0}
N_TRAIN=${N_TRAIN:-16}
N_VAL=${N_VAL:-4}
N_TEST=${N_TEST:-4}
N_CLINICAL=${N_CLINICAL:-0}
WORKERS=${WORKERS:-1}

case "$SIZE" in
    demo) HW="64 64" ;;
    paper) HW="192 224" ;;
    *x*) HW="${SIZE/x/ }" ;;
    *) echo "SIZE must be demo, paper or HxW, got '$SIZE'" >&2; exit 2 ;;
esac

"$PYTHON" -m ldm.data.synthetic --out "$OUT/raw" --size "$SIZE" --seed "$SEED" --n_train "$N_TRAIN" \
    --n_val "$N_VAL" --n_test "$N_TEST" --n_clinical "$N_CLINICAL" --workers "$WORKERS"
PYTHON="$PYTHON" RAW="$OUT/raw" NPY="$OUT/npy" SIZE="$HW" WORKERS="$WORKERS" bash scripts/preprocessing.sh
