"""CompVis's import path of the DDIM sampler; it lives in :mod:`ldm.samplers.ddim` with the other samplers."""
from ldm.samplers.ddim import DDIMSampler

__all__ = ["DDIMSampler"]
