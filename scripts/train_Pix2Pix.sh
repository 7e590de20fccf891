#!/usr/bin/env bash
# Table 1 baseline: train Pix2Pix (Isola et al. 2017) from CTP to [DWI, ADC] on the
# preprocessed slices (configs/baselines/pix2pix.yaml; no first stage: the GAN works on the images).
# Extra arguments are passed on to main.py, e.g.
#   bash scripts/train_Pix2Pix.sh lightning.trainer.devices=2
#   CONFIG=configs/demo/pix2pix.yaml bash scripts/train_Pix2Pix.sh   # the synthetic demo
# Sample it with scripts/sample_LDM.py -r logs/<run> (one forward pass per slice, no sampler) and score
# it with scripts/evaluate.py like the latent models (docs/baselines.md). Resume: python main.py -r logs/<run> -t
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/baselines/pix2pix.yaml}
exec "$PYTHON" main.py --base "$CONFIG" -t --name pix2pix "$@"
