"""CTP-to-DWI registration: the step the paper did with ANTs, here with SimpleITK (ITK's registration
framework, which ANTs builds on).

The paper registered each CTP into its DWI space with ANTs (rigid, then affine). Here:
1. optionally (``motion``) every frame is first aligned to the first by a rigid registration
   (patient motion during the 40-60 s acquisition);
2. the moving image is the CTP's temporal mean, skull-stripped with the given CT-space brain mask
   or one derived from the CTP (brain_mask.py) and kept in the soft-tissue window; the fixed image
   is the DWI, winsorised at its 99.5th percentile (as ANTs does). A CT finer than 1 mm in-plane
   (clinical 0.4-0.5 mm) is first brought to 1 mm for this: the DWI has 1 mm voxels at best, and
   the metric and the brain mask then cost a fifth;
3. rigid (Euler 3-D), then affine registration maximising Mattes mutual information (Mattes et al.,
   IEEE TMI 2003; the metric ANTs uses for multi-modal rigid/affine stages): 32 histogram bins, a
   fixed-seed random 20 % of the DWI's voxels, linear interpolation, regular-step gradient descent
   with scales from physical shifts, three resolution levels (shrink 4, 2, 1, Gaussian smoothing
   2, 1, 0 mm), initialised by the centres of mass of the two images;
4. the transform is applied to every frame (composed with its motion correction) and to any
   CT-space mask (linear, kept where > 0.5), onto the DWI's grid: its shape and affine.
The mutual information of the DWI and the stripped mean CTP is reported before (as the headers
place them) and after, on all voxels.

Conventions: NIfTI affines are RAS; ITK works in LPS, so images are converted with
``diag(-1, -1, 1)``. A transform maps fixed (DWI) points to moving (CT) points, as ITK and ANTs
write them (``.tfm``).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
FILL_UNSTRIPPED_HU = -1024.0  # outside the CT's field of view: air, in an unstripped CTP


@dataclass(frozen=True)
class RegistrationSettings:
    histogram_bins: int = 32
    sampling_percentage: float = 0.2
    seed: int = 23
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)
    rigid_iterations: int = 200
    affine_iterations: int = 100
    learning_rate: float = 1.0
    min_step: float = 1e-3
    motion_shrink_factors: tuple[int, ...] = (4, 2)
    motion_smoothing_mm: tuple[float, ...] = (2.0, 1.0)
    motion_iterations: int = 60
    working_mm: float = 1.0  # CT voxels finer than this (in-plane) are pooled for the mask and the metric


@dataclass
class RegistrationResult:
    """The registered CTP (X, Y, Z, T) on the DWI grid, masks there, and the transform."""

    ctp: np.ndarray
    masks: dict[str, np.ndarray]
    brain_mask: np.ndarray  # the CT brain mask used for stripping, on the DWI grid
    brain_mask_before: np.ndarray  # the same placed by the CT header alone (no registration)
    transform: object  # SimpleITK.Transform: DWI (fixed) LPS points -> CT (moving) LPS points
    motion: list[object] | None
    mi_before: float
    mi_after: float
    brain_mask_source: str
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict:
        import SimpleITK as sitk

        out = {"mutual_information_before": self.mi_before, "mutual_information_after": self.mi_after,
               "transform": _transform_json(self.transform), "ctp_brain_mask": self.brain_mask_source,
               "seconds": round(self.seconds, 2), "stages_s": {k: round(v, 2) for k, v in self.stages.items()},
               "simpleitk": sitk.Version_VersionString()}
        if self.motion is not None:
            out["motion"] = [_transform_json(t) for t in self.motion]
        return out


def _transform_json(transform) -> dict:
    return {"type": transform.GetName(), "parameters": [float(v) for v in transform.GetParameters()],
            "fixed_parameters": [float(v) for v in transform.GetFixedParameters()]}


def to_sitk(volume: np.ndarray, affine: np.ndarray):
    """A 3-D array (X, Y, Z) with its RAS affine as a float32 SimpleITK image (LPS geometry)."""
    import SimpleITK as sitk

    affine = np.asarray(affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing([float(z) for z in zooms])
    image.SetOrigin([float(v) for v in RAS_TO_LPS @ affine[:3, 3]])
    image.SetDirection([float(v) for v in (RAS_TO_LPS @ (affine[:3, :3] / zooms)).ravel()])
    return image


def from_sitk(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def transform_to_ras(transform) -> np.ndarray:
    """4 x 4 RAS matrix of a linear (rigid/affine) SimpleITK transform."""
    matrix = np.eye(4)
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    for axis in range(3):
        e = np.zeros(3)
        e[axis] = 1.0
        matrix[:3, axis] = np.asarray(transform.TransformPoint(tuple(e))) - origin
    matrix[:3, 3] = origin
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ matrix @ flip


def mutual_information(fixed, moving, transform, bins: int = 32) -> float:
    """Mattes mutual information (nats) of ``fixed`` and ``moving`` under ``transform``, all voxels."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    return -float(method.MetricEvaluate(fixed, moving))  # ITK minimises the negative MI


def _method(settings: RegistrationSettings, shrink, smoothing, iterations: int):
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(settings.sampling_percentage, settings.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=settings.learning_rate, minStep=settings.min_step,
                                                    numberOfIterations=iterations, relaxationFactor=0.5,
                                                    gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(smoothing))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def rigid_then_affine(fixed, moving, settings: RegistrationSettings = RegistrationSettings()):
    """The affine transform (fixed -> moving points) from a rigid then an affine MI stage."""
    import SimpleITK as sitk

    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = _method(settings, settings.shrink_factors, settings.smoothing_mm, settings.rigid_iterations)
    rigid.SetInitialTransform(initial, inPlace=False)
    rigid_result = sitk.Euler3DTransform(sitk.CompositeTransform(rigid.Execute(fixed, moving)).GetBackTransform())
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid_result.GetCenter())
    affine.SetMatrix(rigid_result.GetMatrix())
    affine.SetTranslation(rigid_result.GetTranslation())
    stage = _method(settings, settings.shrink_factors[1:] or settings.shrink_factors,
                    settings.smoothing_mm[1:] or settings.smoothing_mm, settings.affine_iterations)
    stage.SetInitialTransform(affine, inPlace=False)
    result = stage.Execute(fixed, moving)
    return sitk.AffineTransform(sitk.CompositeTransform(result).GetBackTransform())


def motion_correction(ctp: np.ndarray, affine: np.ndarray, settings: RegistrationSettings = RegistrationSettings()
                      ) -> list:
    """Rigid transforms (frame-0 points -> frame-k points) aligning every frame to the first."""
    import SimpleITK as sitk

    reference = to_sitk(ctp[..., 0], affine)
    transforms = [sitk.Euler3DTransform()]
    for k in range(1, ctp.shape[-1]):
        frame = to_sitk(ctp[..., k], affine)
        method = _method(settings, settings.motion_shrink_factors, settings.motion_smoothing_mm,
                         settings.motion_iterations)
        initial = sitk.Euler3DTransform()
        initial.SetCenter(reference.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2.0 for n in reference.GetSize()]))
        method.SetInitialTransform(initial, inPlace=False)
        transforms.append(sitk.Euler3DTransform(sitk.CompositeTransform(method.Execute(reference, frame))
                                                .GetBackTransform()))
    return transforms


def _winsorised(volume: np.ndarray, upper: float = 99.5) -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float32)
    positive = volume[volume > 0]
    if positive.size == 0:
        return volume
    return np.clip(volume, 0.0, float(np.percentile(positive, upper)))


def _resample(volume: np.ndarray, affine: np.ndarray, reference, transform, fill: float) -> np.ndarray:
    import SimpleITK as sitk

    out = sitk.Resample(to_sitk(volume, affine), reference, transform, sitk.sitkLinear, float(fill), sitk.sitkFloat32)
    return from_sitk(out)


def register_ctp(ctp: np.ndarray, ctp_affine: np.ndarray, dwi: np.ndarray, dwi_affine: np.ndarray,
                 brain_mask: np.ndarray | None = None, masks: Mapping[str, np.ndarray] | None = None,
                 motion: bool = False, settings: RegistrationSettings = RegistrationSettings()
                 ) -> RegistrationResult:
    """Register a CTP (X, Y, Z, T, HU; RAS ``ctp_affine``) into the space of ``dwi`` (see the module
    doc). ``brain_mask`` (CT grid) strips the mean CTP, else a mask is derived; ``masks`` (CT grid)
    are carried along onto the DWI grid."""
    import SimpleITK as sitk

    from ldm.data.transforms.brain_mask import SOFT_TISSUE_HU, brain_mask_from_statistics, is_skull_stripped
    from ldm.data.transforms.resampling import Grid, resample, target_grid

    start = time.perf_counter()
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    motion_transforms = motion_correction(ctp, ctp_affine, settings) if motion else None
    stages["motion"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if motion_transforms is None:
        mean = ctp.mean(axis=-1, dtype=np.float32)
        varying = None
        fill = 0.0 if is_skull_stripped(mean) else FILL_UNSTRIPPED_HU
    else:  # statistics of the aligned frames, frame by frame (no aligned copy of the whole series)
        fill = 0.0 if is_skull_stripped(ctp[..., 0].astype(np.float32)) else FILL_UNSTRIPPED_HU
        reference = to_sitk(ctp[..., 0], ctp_affine)
        mean = np.zeros(ctp.shape[:3], dtype=np.float32)
        low = np.full(ctp.shape[:3], np.inf, dtype=np.float32)
        high = np.full(ctp.shape[:3], -np.inf, dtype=np.float32)
        for k in range(ctp.shape[-1]):
            frame = _resample(ctp[..., k], ctp_affine, reference, motion_transforms[k], fill)
            mean += frame / np.float32(ctp.shape[-1])
            np.minimum(low, frame, out=low)
            np.maximum(high, frame, out=high)
        varying = high > low
    if varying is None:
        varying = ctp.max(axis=-1) > ctp.min(axis=-1)
    ct_grid = Grid(tuple(int(n) for n in ctp.shape[:3]), np.asarray(ctp_affine, dtype=np.float64))
    zooms = ct_grid.zooms
    working = target_grid(ct_grid, (max(zooms[0], settings.working_mm), max(zooms[1], settings.working_mm), zooms[2]))
    mean = resample(mean, ct_grid.affine, working)
    if brain_mask is None:
        brain = brain_mask_from_statistics(mean, resample(varying, ct_grid.affine, working, mask=True),
                                           zooms=working.zooms)
        source = "derived from the CTP"
        if not brain.any():
            raise ValueError("no brain found in the CTP (derived brain mask is empty): give a CT-space mask")
    else:
        brain, source = resample(np.asarray(brain_mask) > 0.5, ct_grid.affine, working, mask=True), "given"
    # Mattes MI bins each image's intensity range: a few bone voxels left in the mask (or a bright
    # DWI artefact) would squeeze the brain into one or two bins. So the stripped CT is kept in the
    # soft-tissue window and the DWI winsorised at its 99.5th percentile, as ANTs winsorises.
    fixed = to_sitk(_winsorised(dwi), dwi_affine)
    moving = to_sitk(np.where(brain, np.clip(mean, *SOFT_TISSUE_HU), 0.0), working.affine)
    stages["brain mask"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    identity = sitk.AffineTransform(3)
    mi_before = mutual_information(fixed, moving, identity, settings.histogram_bins)
    transform = rigid_then_affine(fixed, moving, settings)
    mi_after = mutual_information(fixed, moving, transform, settings.histogram_bins)
    stages["registration"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames = np.empty((*dwi.shape[:3], ctp.shape[-1]), dtype=np.float32)
    for k in range(ctp.shape[-1]):
        # DWI point -> frame-0 CT point (transform) -> frame-k CT point (motion): ITK applies a
        # composite's transforms last-added first
        step = transform if motion_transforms is None else sitk.CompositeTransform([motion_transforms[k], transform])
        frames[..., k] = _resample(ctp[..., k], ctp_affine, fixed, step, fill)
    carried = {name: _resample(np.asarray(m, dtype=np.float32), ctp_affine, fixed, transform, 0.0) > 0.5
               for name, m in (masks or {}).items()}
    brain_on_dwi = _resample(brain.astype(np.float32), working.affine, fixed, transform, 0.0) > 0.5
    brain_before = _resample(brain.astype(np.float32), working.affine, fixed, identity, 0.0) > 0.5
    stages["apply"] = time.perf_counter() - t0
    return RegistrationResult(frames, carried, brain_on_dwi, brain_before, transform, motion_transforms, mi_before,
                              mi_after, source, time.perf_counter() - start, stages)
