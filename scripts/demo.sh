#!/usr/bin/env bash
# `make demo`: the whole pipeline on the built-in synthetic stroke cohort, with the same commands
# a user runs on real data (the stage scripts, main.py, sample_LDM.py, evaluate.py), as a controlled
# experiment: cLDM (stage 2), cLDM-PT (stage 3, lesion-aware post-training) with each image target
# (the reference code's VQGAN reconstruction, and the MRI itself as Eq. 6 writes it) and their
# control "cLDM (continued)" (stage 3 with both image-space weights 0: same checkpoint, steps, data,
# augmentation and seed), scored on the same patients with paired statistics, beside the VQGAN's own
# reconstruction of the test patients (the ceiling of every latent model's lesion), and the Table 1
# baselines that CPU time allows (DEMO_BASELINES, below).
#
#   make demo                                   # CPU, within 20 minutes on 2 cores with the install
#   DEMO_SCALE=20 DEMO_ACCELERATOR=gpu make demo    # every stage trains 20x longer (GPU; not yet measured)
#
# Knobs (environment): DEMO_OUT (folder, default demo_output), DEMO_SCALE (multiplies the training
# steps of every stage), DEMO_N_TRAIN / DEMO_N_VAL / DEMO_N_TEST (patients), DEMO_SLICES (axial
# slices per patient), DEMO_SIZE (the in-plane grid, HxW in multiples of 16: 64x64, the default, 3.5 mm
# voxels and 14 mm latent pixels; 128x128 gives 1.75 mm and 7 mm, and keeps the lesions under 1 ml, at
# 2.9x the CPU time: docs/results.md, The grid), DEMO_WINDOW (intensity window: lesion, or
# reference_percentile, the reference's), DEMO_LESION_WEIGHT (the VQGAN's lesion-weighted L1, 20; 0 is
# the reference's loss),
# DEMO_LDM_LESION_WEIGHT (the lesion-weighted L_latent of stages 2 and 3, 100; 0 is the paper's Eq. 4),
# DEMO_CLIP_X0 (1: the latent models' sampler clips x0_hat to the codebook's range; 0: as the reference),
# DEMO_PARAMETERIZATION (what the UNet of stages 2 and 3 predicts: v, the default, eps, the paper's, or x0),
# DEMO_CONDITIONING (how the CTP reaches the latent grid: pixel_unshuffle, the default, every pixel
# stacked into channels, or bilinear, the paper's 4 x 4 average),
# DEMO_PT_TARGETS (the post-training image targets: "reconstruction input", or one of
# them), DEMO_SAMPLER (dpmsolver++ or ddim, the paper's), DEMO_SAMPLE_STEPS (the sampler's steps;
# the paper uses 200 DDIM steps), DEMO_ACCELERATOR (auto, cpu or gpu), DEMO_SEED (seed of every
# training run and of sampling), DEMO_COHORT_SEED (the synthetic cohort), DEMO_BASELINES (Table 1
# baselines trained, sampled and scored beside the latent models: any of pix2pix, cyclegan,
# pairedcyclegan, bbdm; default pix2pix) and DEMO_BASELINE_STEPS (their lightning max_steps, 1000: a
# GAN counts both optimisers' steps, so 500 batches).
#
# Baselines left out of the default demo, for CPU time (docs/baselines.md has the measurements):
# CycleGAN and PairedCycleGAN (each batch runs four generator passes and two or three discriminators:
# several times the cLDM's step) and BBDM (a second latent diffusion model, as long to train as the
# cLDM). Add them with DEMO_BASELINES="pix2pix cyclegan pairedcyclegan bbdm" when time allows;
# `make study` has all four with STUDY_BASELINES.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${DEMO_OUT:-demo_output}
SCALE=${DEMO_SCALE:-1}
N_TRAIN=${DEMO_N_TRAIN:-16}
N_VAL=${DEMO_N_VAL:-3}
N_TEST=${DEMO_N_TEST:-10}          # stratified lesion volumes: 4 test patients with >= 2 ml of lesion
SLICES=${DEMO_SLICES:-32}          # the whole brain
WINDOW=${DEMO_WINDOW:-lesion}
GRID=${DEMO_SIZE:-64x64}
# multiples of 16: the VQGAN halves twice (f = 4) and the demo UNet twice more
if ! [[ $GRID =~ ^([0-9]+)x([0-9]+)$ ]] || (( BASH_REMATCH[1] < 32 || BASH_REMATCH[2] < 32 \
        || BASH_REMATCH[1] % 16 || BASH_REMATCH[2] % 16 )); then
    echo "demo: DEMO_SIZE must be HxW, each a multiple of 16 and at least 32 (e.g. 64x64, 128x128), got '$GRID'" >&2
    exit 2
fi
H=${BASH_REMATCH[1]}
W=${BASH_REMATCH[2]}
LESION_WEIGHT=${DEMO_LESION_WEIGHT:-20}
LDM_LESION_WEIGHT=${DEMO_LDM_LESION_WEIGHT:-100}
PARAMETERIZATION=${DEMO_PARAMETERIZATION:-v}
case $PARAMETERIZATION in eps|x0|v) ;; *) echo "demo: DEMO_PARAMETERIZATION must be eps, x0 or v, got '$PARAMETERIZATION'" >&2; exit 2;; esac
CONDITIONING=${DEMO_CONDITIONING:-pixel_unshuffle}
case $CONDITIONING in bilinear|pixel_unshuffle) ;; *) echo "demo: DEMO_CONDITIONING must be bilinear or pixel_unshuffle, got '$CONDITIONING'" >&2; exit 2;; esac
case ${DEMO_CLIP_X0:-1} in 1) CLIP_X0=--clip_x0;; 0) CLIP_X0=--no-clip_x0;;
    *) echo "demo: DEMO_CLIP_X0 must be 1 or 0, got '${DEMO_CLIP_X0}'" >&2; exit 2;; esac
PT_TARGETS=${DEMO_PT_TARGETS:-"reconstruction input"}
SAMPLER=${DEMO_SAMPLER:-dpmsolver++}   # 20 steps: within 2% of DDIM-200's lesion MAE (docs/results.md, Samplers)
SAMPLE_STEPS=${DEMO_SAMPLE_STEPS:-20}
ACCEL=${DEMO_ACCELERATOR:-auto}
SEED=${DEMO_SEED:-0}                # training (every stage) and sampling
COHORT_SEED=${DEMO_COHORT_SEED:-0}  # the synthetic cohort
BASELINES=${DEMO_BASELINES-pix2pix}   # Table 1 baselines (set it empty for none)
BASELINE_STEPS=${DEMO_BASELINE_STEPS:-1000}
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
    printf '\n==> [%d/%d] %s\n' "$STAGE" "$N_STAGES" "$1"
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
    "data.params.train.params.window=$WINDOW"
    "data.params.validation.params.window=$WINDOW"
    "lightning.trainer.accelerator=$ACCEL"
)
# the grid: the configs say 64 x 64 (latents 16 x 16); every size key follows DEMO_SIZE, and so does the
# augmentation's shift, given in pixels (the reference's 32 px at 192, the configs' 10.667 at 64): the same
# share of the slice, so the same millimetres, at every grid
if [ "$H" != 64 ] || [ "$W" != 64 ]; then
    DATA_OVERRIDES+=("data.params.train.params.augment.max_translation=[$("$PYTHON" -c \
        "import sys; print(','.join(f'{32 * int(v) / 192:.3f}' for v in sys.argv[1:]))" "$H" "$W")]")
fi
VQGAN_SIZE=("model.params.ddconfig.resolution=$H")
LATENT_SIZE=(
    "model.params.image_size=[$((H / 4)),$((W / 4))]"
    "model.params.unet_config.params.image_size=[$((H / 4)),$((W / 4))]"
    "model.params.first_stage_config.params.ddconfig.resolution=$H"
)
# what stages 2 and 3 share: post-training and its control start from the cLDM and must build the same model
LATENT_OVERRIDES=(
    "${LATENT_SIZE[@]}"
    "model.params.lesion_weight=$LDM_LESION_WEIGHT"
    "model.params.parameterization=$PARAMETERIZATION"
    "model.params.cond_stage_config.params.method=$CONDITIONING"
)
pt_name() { if [ "$1" = reconstruction ]; then echo cldm_pt; else echo "cldm_pt_$1"; fi; }
pt_label() { if [ "$1" = reconstruction ]; then echo cLDM-PT; else echo "cLDM-PT ($1 target)"; fi; }
for target in $PT_TARGETS; do
    case $target in reconstruction|input) ;; *) echo "demo: DEMO_PT_TARGETS: unknown target '$target' (reconstruction, input)" >&2; exit 2;; esac
done
# the Table 1 baselines: config and label of each run name
baseline_config() { case $1 in pix2pix) echo configs/demo/pix2pix.yaml;; cyclegan) echo configs/demo/cyclegan.yaml;;
    pairedcyclegan) echo configs/demo/paired_cyclegan.yaml;; bbdm) echo configs/demo/bbdm.yaml;; esac; }
baseline_label() { case $1 in pix2pix) echo Pix2Pix;; cyclegan) echo CycleGAN;; pairedcyclegan) echo PairedCycleGAN;;
    bbdm) echo BBDM;; esac; }
for baseline in $BASELINES; do
    case $baseline in pix2pix|cyclegan|pairedcyclegan|bbdm) ;; *) echo "demo: DEMO_BASELINES: unknown baseline '$baseline' (pix2pix, cyclegan, pairedcyclegan, bbdm)" >&2; exit 2;; esac
done
N_STAGES=$(( 8 + $(echo "$PT_TARGETS" | wc -w) + $(echo "$BASELINES" | wc -w) ))

stage "synthetic cohort ($N_TRAIN/$N_VAL/$N_TEST patients, $H x $W, $SLICES slices) and preprocessing"
"$PYTHON" -m ldm.data.synthetic --out "$RAW" --size "${H}x${W}" --seed "$COHORT_SEED" --slices "$SLICES" \
    --n_train "$N_TRAIN" --n_val "$N_VAL" --n_test "$N_TEST"
PYTHON="$PYTHON" RAW="$RAW" NPY="$NPY" SIZE="$H $W" WINDOW="$WINDOW" bash scripts/preprocessing.sh
done_stage

stage "stage 1: VQGAN ($(steps "$VQGAN_STEPS") steps)"
# shellcheck disable=SC2046  # train_overrides is a word list on purpose
"$PYTHON" main.py --base configs/demo/vqgan.yaml -t -l "$OUT/logs" -n vqgan -s "$SEED" "${DATA_OVERRIDES[@]}" \
    "${VQGAN_SIZE[@]}" "model.params.lossconfig.params.lesion_weight=$LESION_WEIGHT" \
    $(train_overrides "$(steps "$VQGAN_STEPS")")
VQGAN_CKPT="$(latest_run vqgan)/checkpoints/last.ckpt"
done_stage

stage "stage 2: conditional LDM, cLDM ($(steps "$LDM_STEPS") steps)"
"$PYTHON" main.py --base configs/demo/ldm.yaml -t -l "$OUT/logs" -n cldm -s "$SEED" "${DATA_OVERRIDES[@]}" \
    "model.params.first_stage_config.params.ckpt_path=$VQGAN_CKPT" "${LATENT_OVERRIDES[@]}" \
    $(train_overrides "$(steps "$LDM_STEPS")")
LDM_RUN="$(latest_run cldm)"
done_stage

stage "the VQGAN's reconstruction D(E(x)) of the test patients (the ceiling of every latent model)"
"$PYTHON" scripts/reconstruct_VQGAN.py -r "$(latest_run vqgan)" --data "$NPY/test" --outdir "$OUT/samples/vqgan"
done_stage

for target in $PT_TARGETS; do
    stage "stage 3: lesion-aware post-training, $(pt_label "$target") ($(steps "$LAPT_STEPS") steps)"
    # Only the image target differs between these runs and the control (same raw stage-2 weights, steps, seed).
    "$PYTHON" main.py --base configs/demo/ldm_lapt.yaml -t -l "$OUT/logs" -n "$(pt_name "$target")" -s "$SEED" \
        "${DATA_OVERRIDES[@]}" "model.params.ckpt_path=$LDM_RUN/checkpoints/last.ckpt" \
        "model.params.image_target=$target" "${LATENT_OVERRIDES[@]}" \
        $(train_overrides "$(steps "$LAPT_STEPS")")
    done_stage
done

stage "control: stage 3 without the image-space terms, cLDM (continued) ($(steps "$LAPT_STEPS") steps)"
# The same command as cLDM-PT but lambda_image = lambda_lesion = 0: the same checkpoint, steps, data,
# augmentation and seed, so any difference to cLDM-PT is the image-space terms' doing.
"$PYTHON" main.py --base configs/demo/ldm_lapt.yaml -t -l "$OUT/logs" -n cldm_continued -s "$SEED" \
    "${DATA_OVERRIDES[@]}" "model.params.ckpt_path=$LDM_RUN/checkpoints/last.ckpt" \
    model.params.lambda_image=0 model.params.lambda_lesion=0 "${LATENT_OVERRIDES[@]}" \
    $(train_overrides "$(steps "$LAPT_STEPS")")
CONTROL_RUN="$(latest_run cldm_continued)"
done_stage

for baseline in $BASELINES; do
    stage "Table 1 baseline: $(baseline_label "$baseline") ($(steps "$BASELINE_STEPS") steps)"
    EXTRA_ARGS=("model.params.image_size=[$H,$W]")  # the GANs work on the slices
    if [ "$baseline" = bbdm ]; then
        EXTRA_ARGS=("model.params.first_stage_config.params.ckpt_path=$VQGAN_CKPT" "${LATENT_SIZE[@]}")
    fi
    # shellcheck disable=SC2046  # train_overrides is a word list on purpose
    "$PYTHON" main.py --base "$(baseline_config "$baseline")" -t -l "$OUT/logs" -n "$baseline" -s "$SEED" \
        "${DATA_OVERRIDES[@]}" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} $(train_overrides "$(steps "$BASELINE_STEPS")")
    done_stage
done

RUNS=("cldm:$LDM_RUN" "cldm_continued:$CONTROL_RUN")
PREDS=("cLDM=$OUT/samples/cldm" "cLDM (continued)=$OUT/samples/cldm_continued")
for target in $PT_TARGETS; do
    name=$(pt_name "$target")
    RUNS+=("$name:$(latest_run "$name")")
    PREDS+=("$(pt_label "$target")=$OUT/samples/$name")
done
stage "sampling the test patients with every model ($SAMPLER, $SAMPLE_STEPS steps)"
for pair in "${RUNS[@]}"; do
    name=${pair%%:*}
    run=${pair#*:}
    "$PYTHON" scripts/sample_LDM.py -r "$run" --data "$NPY/test" --outdir "$OUT/samples/$name" \
        --sampler "$SAMPLER" --steps "$SAMPLE_STEPS" "$CLIP_X0" --batch_size 32 --seed "$SEED"
done
for baseline in $BASELINES; do
    SAMPLE_ARGS=()  # a GAN takes no sampler: one forward pass per slice
    if [ "$baseline" = bbdm ]; then SAMPLE_ARGS=(--sampler bridge --steps "$SAMPLE_STEPS" --seed "$SEED"); fi
    "$PYTHON" scripts/sample_LDM.py -r "$(latest_run "$baseline")" --data "$NPY/test" \
        --outdir "$OUT/samples/$baseline" --batch_size 32 ${SAMPLE_ARGS[@]+"${SAMPLE_ARGS[@]}"}
    PREDS+=("$(baseline_label "$baseline")=$OUT/samples/$baseline")
done
done_stage

stage "evaluation: every model beside the ceilings (Table 1 layout, lesion contrast, paired statistics)"
PAIRS=()
for target in $PT_TARGETS; do PAIRS+=("cLDM (continued):$(pt_label "$target")"); done
"$PYTHON" scripts/evaluate.py --pred "${PREDS[@]}" --reconstruction "$OUT/samples/vqgan" --window "$WINDOW" \
    --gt "$RAW/test" --out "$OUT/evaluation" --n_panels 2 --clinical \
    --pairs "cLDM:cLDM (continued)" "${PAIRS[@]}"
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
