"""CompVis's import path for the Gaussian diffusion models: configs and saved runs name
``ldm.models.diffusion.ddpm.LatentDiffusion`` (and ``DDPM``), as in CompVis's latent-diffusion.

One class per file: ``DDPM`` in :mod:`.gaussian_diffusion`, ``LatentDiffusion`` (the cLDM) in
:mod:`.latent_diffusion`, ``DiffusionWrapper`` in :mod:`.diffusion_wrapper`.
"""
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper
from ldm.models.diffusion.gaussian_diffusion import DDPM
from ldm.models.diffusion.latent_diffusion import LatentDiffusion, disabled_train, freeze

__all__ = ["DDPM", "DiffusionWrapper", "LatentDiffusion", "disabled_train", "freeze"]
