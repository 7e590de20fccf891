#!/usr/bin/env bash
# Table 1 baseline: train BBDM, the Brownian bridge without the CTP concatenation
# (configs/bbdm/bbdm.yaml: the cBBDM's settings with concat_condition: false), on the frozen VQGAN's
# latents. The config's first_stage_config.params.ckpt_path must point to the stage-1 checkpoint: set
# it there, or with VQGAN_CKPT=..., or as an override. Extra arguments are passed on to main.py, e.g.
#   VQGAN_CKPT=logs/<vqgan run>/checkpoints/last.ckpt bash scripts/train_BBDM.sh lightning.trainer.devices=2
#   CONFIG=configs/demo/bbdm.yaml VQGAN_CKPT=... bash scripts/train_BBDM.sh   # the synthetic demo
# Sample it with scripts/sample_LDM.py (bridge sampler). Resume a run with: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/bbdm/bbdm.yaml}
ARGS=(--base "$CONFIG" -t --name bbdm)
if [[ -n "${VQGAN_CKPT:-}" ]]; then
    ARGS+=("model.params.first_stage_config.params.ckpt_path=$VQGAN_CKPT")
fi
exec "$PYTHON" main.py "${ARGS[@]}" "$@"
