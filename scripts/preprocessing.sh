#!/usr/bin/env bash
# Step 0 of the pipeline, as in the reference release: NIfTI cohort -> NPY slices + index.json.
#
#   bash scripts/preprocessing.sh
#   RAW=data/raw NPY=data/npy SIZE="192 224" SPACING="1 1 5" TIMEPOINTS=15 WORKERS=4 bash scripts/preprocessing.sh
#
# RAW holds <split>/<patient_id>/{ctp,dwi,adc,mask,lesion}.nii.gz (docs/data.md). The training split
# is done first: it stores the cohort reference constants (reference.json) that val/test/clinical
# reuse through --reference (CTP-only patients get their MRI intensity scale from them).
# SPACING is the model grid's voxel size in mm (default the paper's 1 1 5; "native" keeps each
# patient's grid), except for a synthetic cohort (RAW/cohort.json, ldm/data/synthetic): its
# stated voxel size is the default there, so that the demo's 3.5 x 3.5 x 5 mm cohort is not
# resampled. TIMEPOINTS is the CTP frame count (default 15; more frames are resampled in time).
# WINDOW is the DWI/ADC intensity window (docs/data.md): lesion (default: ADC 0-2500 x 10^-6 mm^2/s,
# DWI 0-3 x the brain median, so lesions are kept) or reference_percentile (the reference code's).
# EXTRA="--skip-bad" keeps going with exit code 0 when some patients are rejected.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
RAW=${RAW:-data/raw}
NPY=${NPY:-data/npy}
SIZE=${SIZE:-"192 224"}
WORKERS=${WORKERS:-1}
EXTRA=${EXTRA:-}
TIMEPOINTS=${TIMEPOINTS:-15}
WINDOW=${WINDOW:-lesion}
if [ -z "${SPACING:-}" ] && [ -f "$RAW/cohort.json" ]; then
    SPACING=$("$PYTHON" -c 'import json, sys; print(*json.load(open(sys.argv[1]))["voxel_mm"])' "$RAW/cohort.json")
fi
SPACING=${SPACING:-"1 1 5"}

# shellcheck disable=SC2086  # SIZE and EXTRA are word lists on purpose
"$PYTHON" -m ldm.data.preprocessing --input_dir "$RAW/train" --output_dir "$NPY/train" \
    --size $SIZE --spacing $SPACING --timepoints "$TIMEPOINTS" --window "$WINDOW" --workers "$WORKERS" $EXTRA
for split in val test clinical; do
    if [ -d "$RAW/$split" ]; then
        # shellcheck disable=SC2086
        "$PYTHON" -m ldm.data.preprocessing --input_dir "$RAW/$split" --output_dir "$NPY/$split" \
            --size $SIZE --spacing $SPACING --timepoints "$TIMEPOINTS" --window "$WINDOW" --workers "$WORKERS" \
            --reference "$NPY/train" $EXTRA
    fi
done
