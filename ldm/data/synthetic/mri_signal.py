"""Synthetic diffusion MRI: the b=1000 DWI signal and the ADC map (10^-6 mm^2/s).

Each compartment has a T2-weighted signal S0 and a diffusivity D; a voxel's signal is
``S(b) = gain * bias * sum_c f_c S0_c exp(-b D_c)`` and its ADC is what a two-point fit measures,
``-ln(S(1000) / S(0)) / 1000`` (so CSF partial volume raises it, as on real maps). Tissue: grey
matter ~830, white matter ~700, CSF ~3000; in the infarct core the tissue's diffusivity drops to a
per-patient 400-550 and its T2 signal rises a little, so the core is bright on DWI and dark on ADC.
Per patient: receiver gain, a smooth bias field, Rician noise on DWI and Gaussian noise on ADC.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

B_VALUE = 1000.0  # s/mm^2
ADC_UNIT = 1e-6  # mm^2/s per stored unit

# name: (S0 relative to white matter ~ 1, diffusivity in 1e-6 mm^2/s)
TISSUE = {"gm": (1.15, 830.0), "wm": (0.95, 700.0), "csf": (2.0, 3000.0)}


@dataclass
class DiffusionPatient:
    gain: float
    core_adc: float
    core_t2_gain: float
    dwi_noise: float  # Rician sigma relative to white-matter DWI
    adc_noise: float  # 1e-6 mm^2/s
    bias_waves: np.ndarray  # (K, 3) rad/mm
    bias_phases: np.ndarray
    bias_amplitudes: np.ndarray

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "DiffusionPatient":
        directions = rng.normal(size=(3, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return cls(gain=float(rng.uniform(300.0, 900.0)), core_adc=float(rng.uniform(400.0, 550.0)),
                   core_t2_gain=float(rng.uniform(1.1, 1.35)), dwi_noise=float(rng.uniform(0.02, 0.04)),
                   adc_noise=float(rng.uniform(25.0, 50.0)),
                   bias_waves=2 * np.pi * directions / rng.uniform(150.0, 300.0, size=(3, 1)),
                   bias_phases=rng.uniform(0, 2 * np.pi, size=3), bias_amplitudes=rng.uniform(0.02, 0.05, size=3))


def synthesize_dwi_adc(rng: np.random.Generator, fractions: dict[str, np.ndarray], core: np.ndarray,
                       brain: np.ndarray, mni: np.ndarray, noise_scale: float = 1.0,
                       patient: DiffusionPatient | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DWI (b=1000, arbitrary scanner units) and ADC (1e-6 mm^2/s), both (X, Y, Z) float32.

    ``noise_scale`` multiplies the noise of a 1 x 1 x 5 mm voxel (coarser voxels average it down).
    """
    patient = patient or DiffusionPatient.sample(rng)
    s0 = np.zeros(brain.shape, dtype=np.float32)
    s_b = np.zeros(brain.shape, dtype=np.float32)
    for name, (t2_signal, diffusivity) in TISSUE.items():
        fraction = fractions[name]
        if name == "csf":
            signal, adc = np.float32(t2_signal), np.float32(diffusivity)
        else:
            signal = t2_signal * (1.0 + (patient.core_t2_gain - 1.0) * core)
            adc = diffusivity + (patient.core_adc - diffusivity) * core
        s0 += fraction * signal
        s_b += fraction * signal * np.exp(-B_VALUE * ADC_UNIT * adc)

    bias = np.ones(brain.shape, dtype=np.float32)
    for wave, phase, amplitude in zip(patient.bias_waves, patient.bias_phases, patient.bias_amplitudes):
        phase_map = np.einsum("i,i...->...", wave.astype(np.float32), mni) + np.float32(phase)
        bias += np.float32(amplitude) * np.cos(phase_map)

    safe = np.maximum(s0, 1e-6)
    adc = -np.log(np.maximum(s_b, 1e-9) / safe) / (B_VALUE * ADC_UNIT)
    adc_noise = rng.standard_normal(brain.shape, dtype=np.float32) * np.float32(patient.adc_noise * noise_scale)
    adc = np.maximum(adc + adc_noise, 0.0)

    dwi = patient.gain * bias * s_b
    white_matter_dwi = TISSUE["wm"][0] * np.exp(-B_VALUE * ADC_UNIT * TISSUE["wm"][1])
    sigma = np.float32(noise_scale * patient.gain * patient.dwi_noise * white_matter_dwi)
    real = dwi + rng.standard_normal(brain.shape, dtype=np.float32) * sigma
    imaginary = rng.standard_normal(brain.shape, dtype=np.float32) * sigma
    dwi = np.sqrt(real * real + imaginary * imaginary)
    return (dwi * brain).astype(np.float32), (adc * brain).astype(np.float32)
