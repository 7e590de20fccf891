#!/usr/bin/env bash
# Stage 2: train the conditional latent diffusion model (cLDM) on the frozen VQGAN's latents
# (configs/latent-diffusion/ldm.yaml). The config's first_stage_config.params.ckpt_path must point
# to the stage-1 checkpoint: set it there, or with VQGAN_CKPT=..., or as an override. Extra
# arguments are passed on to main.py, e.g.
#   VQGAN_CKPT=logs/<vqgan run>/checkpoints/last.ckpt bash scripts/train_LDM.sh lightning.trainer.devices=2
#   bash scripts/train_LDM.sh lightning.trainer.precision=bf16-mixed model.params.unet_config.params.use_checkpoint=true
# Resume a run with: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/latent-diffusion/ldm.yaml}
ARGS=(--base "$CONFIG" -t --name ldm)
if [[ -n "${VQGAN_CKPT:-}" ]]; then
    ARGS+=("model.params.first_stage_config.params.ckpt_path=$VQGAN_CKPT")
fi
exec "$PYTHON" main.py "${ARGS[@]}" "$@"
