#!/usr/bin/env bash
# Generalisation (paper Table 3): train the conditional Brownian bridge model (cBBDM) on the frozen
# VQGAN's latents (configs/bbdm/cbbdm.yaml). The config's first_stage_config.params.ckpt_path must
# point to the stage-1 checkpoint: set it there, or with VQGAN_CKPT=..., or as an override. Extra
# arguments are passed on to main.py, e.g.
#   VQGAN_CKPT=logs/<vqgan run>/checkpoints/last.ckpt bash scripts/train_cBBDM.sh lightning.trainer.devices=2
#   CONFIG=configs/demo/cbbdm.yaml VQGAN_CKPT=... bash scripts/train_cBBDM.sh   # the synthetic demo
# Then post-train it with scripts/train_cBBDM_PT.sh, and sample either with scripts/sample_LDM.py
# (bridge sampler; pass --eta 1 for BBDM's ancestral sampling). Resume a run with: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/bbdm/cbbdm.yaml}
ARGS=(--base "$CONFIG" -t --name cbbdm)
if [[ -n "${VQGAN_CKPT:-}" ]]; then
    ARGS+=("model.params.first_stage_config.params.ckpt_path=$VQGAN_CKPT")
fi
exec "$PYTHON" main.py "${ARGS[@]}" "$@"
