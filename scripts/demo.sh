#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in synthetic stroke cohort, with the same commands
# a user runs on real data (the stage scripts, main.py, sample_LDM.py, evaluate.py), as a controlled
# experiment: cLDM (stage 2), cLDM-PT (stage 3, lesion-aware post-training) and its control
# "cLDM (continued)" (stage 3 with both image-space weights 0: same checkpoint, steps, data,
# augmentation and seed), scored on the same patients with paired statistics.
#
#   make demo                                   # CPU, about 15 minutes on 2 cores (measured: 882 s)
#   DEMO_SCALE=20 DEMO_ACCELERATOR=gpu make demo    # every stage trains 20x longer (GPU; not yet measured)
#
# Knobs (environment): DEMO_OUT (folder, default demo_output), DEMO_SCALE (multiplies the training
# steps of every stage), DEMO_N_TRAIN / DEMO_N_VAL / DEMO_N_TEST (patients), DEMO_SLICES (axial
# slices per patient), DEMO_SAMPLER (ddim, the paper's, or dpmsolver++), DEMO_SAMPLE_STEPS (the
# sampler's steps; the paper uses 200 DDIM steps), DEMO_ACCELERATOR
# (auto, cpu or gpu), DEMO_SEED (seed of every training run and of sampling), DEMO_COHORT_SEED (the
# synthetic cohort).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${DEMO_OUT:-demo_output}
SCALE=${DEMO_SCALE:-1}
N_TRAIN=${DEMO_N_TRAIN:-16}
N_VAL=${DEMO_N_VAL:-3}
N_TEST=${DEMO_N_TEST:-4}
SLICES=${DEMO_SLICES:-24}
SAMPLER=${DEMO_SAMPLER:-ddim}
SAMPLE_STEPS=${DEMO_SAMPLE_STEPS:-50}
ACCEL=${DEMO_ACCELERATOR:-auto}
SEED=${DEMO_SEED:-0}                # training (every stage) and sampling
COHORT_SEED=${DEMO_COHORT_SEED:-0}  # the synthetic cohort
# Steps per stage at DEMO_SCALE=1: the demo fits 20 minutes on a 2-core CPU with room to spare.
VQGAN_STEPS=${DEMO_VQGAN_STEPS:-800}
LDM_STEPS=${DEMO_LDM_STEPS:-1000}
LAPT_STEPS=${DEMO_LAPT_STEPS:-200}

# validate 4 times per stage, counted in training batches across epochs
val_every() { "$PYTHON" -c "import sys; print(max(1, int(sys.argv[1]) // 4))" "$1"; }
train_overrides() {
    echo "lightning.trainer.max_steps=$1" "lightning.trainer.val_check_interval=$(val_every "$1")" \
        "lightning.trainer.check_val_every_n_epoch=null"
}
steps() { "$PYTHON" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$SCALE"; }
latest_run() { ls -d "$OUT/logs/"*"_$1" 2>/dev/null | sort | tail -n 1; }

T0=$(date +%s)
STAGE=0
stage() {
    STAGE=$((STAGE + 1))
    STAGE_T0=$(date +%s)
    printf '\n==> [%d/8] %s\n' "$STAGE" "$1"
}
done_stage() { printf '    done in %ds (total %ds)\n' "$(( $(date +%s) - STAGE_T0 ))" "$(( $(date +%s) - T0 ))"; }

# Start afresh, but only ever delete a folder that an earlier demo made (it holds the marker).
MARKER="$OUT/.made_by_demo"
if [ -e "$OUT" ] && [ ! -e "$MARKER" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    echo "demo: $OUT exists and was not made by the demo; set DEMO_OUT to a new folder" >&2
    exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT"
touch "$MARKER"
RAW="$OUT/raw"
NPY="$OUT/npy"
DATA_OVERRIDES=(
    "data.params.train.params.data_root=$NPY/train"
    "data.params.validation.params.data_root=$NPY/val"
    "lightning.trainer.accelerator=$ACCEL"
)

stage "synthetic cohort ($N_TRAIN/$N_VAL/$N_TEST patients, 64 x 64, $SLICES slices) and preprocessing"
"$PYTHON" -m ldm.data.synthetic --out "$RAW" --size demo --seed "$COHORT_SEED" --slices "$SLICES" \
    --n_train "$N_TRAIN" --n_val "$N_VAL" --n_test "$N_TEST"
PYTHON="$PYTHON" RAW="$RAW" NPY="$NPY" SIZE="64 64" bash scripts/preprocessing.sh
done_stage

stage "stage 1: VQGAN ($(steps "$VQGAN_STEPS") steps)"
# shellcheck disable=SC2046  # train_overrides is a word list on purpose
"$PYTHON" main.py --base configs/demo/vqgan.yaml -t -l "$OUT/logs" -n vqgan -s "$SEED" "${DATA_OVERRIDES[@]}" \
    $(train_overrides "$(steps "$VQGAN_STEPS")")
VQGAN_CKPT="$(latest_run vqgan)/checkpoints/last.ckpt"
done_stage

stage "stage 2: conditional LDM, cLDM ($(steps "$LDM_STEPS") steps)"
"$PYTHON" main.py --base configs/demo/ldm.yaml -t -l "$OUT/logs" -n cldm -s "$SEED" "${DATA_OVERRIDES[@]}" \
    "model.params.first_stage_config.params.ckpt_path=$VQGAN_CKPT" $(train_overrides "$(steps "$LDM_STEPS")")
LDM_RUN="$(latest_run cldm)"
done_stage

stage "stage 3: lesion-aware post-training, cLDM-PT ($(steps "$LAPT_STEPS") steps)"
"$PYTHON" main.py --base configs/demo/ldm_lapt.yaml -t -l "$OUT/logs" -n cldm_pt -s "$SEED" "${DATA_OVERRIDES[@]}" \
    "model.params.ckpt_path=$LDM_RUN/checkpoints/last.ckpt" $(train_overrides "$(steps "$LAPT_STEPS")")
LAPT_RUN="$(latest_run cldm_pt)"
done_stage

stage "control: stage 3 without the image-space terms, cLDM (continued) ($(steps "$LAPT_STEPS") steps)"
# The same command as cLDM-PT but lambda_image = lambda_lesion = 0: the same checkpoint, steps, data,
# augmentation and seed, so any difference to cLDM-PT is the image-space terms' doing.
"$PYTHON" main.py --base configs/demo/ldm_lapt.yaml -t -l "$OUT/logs" -n cldm_continued -s "$SEED" \
    "${DATA_OVERRIDES[@]}" "model.params.ckpt_path=$LDM_RUN/checkpoints/last.ckpt" \
    model.params.lambda_image=0 model.params.lambda_lesion=0 $(train_overrides "$(steps "$LAPT_STEPS")")
CONTROL_RUN="$(latest_run cldm_continued)"
done_stage

stage "sampling the test patients with cLDM, cLDM (continued) and cLDM-PT ($SAMPLER, $SAMPLE_STEPS steps)"
for pair in "cldm:$LDM_RUN" "cldm_continued:$CONTROL_RUN" "cldm_pt:$LAPT_RUN"; do
    name=${pair%%:*}
    run=${pair#*:}
    "$PYTHON" scripts/sample_LDM.py -r "$run" --data "$NPY/test" --outdir "$OUT/samples/$name" \
        --sampler "$SAMPLER" --steps "$SAMPLE_STEPS" --batch_size 32 --seed "$SEED"
done
done_stage

stage "evaluation: cLDM, cLDM (continued), cLDM-PT (Table 1 layout, paired statistics)"
"$PYTHON" scripts/evaluate.py --pred "cLDM=$OUT/samples/cldm" "cLDM (continued)=$OUT/samples/cldm_continued" \
    "cLDM-PT=$OUT/samples/cldm_pt" --gt "$RAW/test" --out "$OUT/evaluation" --n_panels 2 --clinical
done_stage

stage "results"
cat "$OUT/evaluation/table1.md"
echo
echo "Clinical read-out (ischemic core from ADC < 620 x 10^-6 mm^2/s, decision core < 70 ml):"
cat "$OUT/evaluation/clinical.md"
echo "The synthetic cohort is not clinical data: these figures show that every stage and the read-out work;"
echo "they are not the paper's figures and not clinical evidence."
echo
echo "Synthesised NIfTI volumes (open them over $RAW/test/<patient>/dwi.nii.gz):"
ls "$OUT"/samples/*/*/*.nii.gz | head -n 8
echo "Figure panels:"
ls "$OUT"/evaluation/panels/*.png 2>/dev/null || true
echo "Runs (checkpoints, configs, image grids, TensorBoard): $OUT/logs"
done_stage
printf '\nDemo finished in %ds.\n' "$(( $(date +%s) - T0 ))"
