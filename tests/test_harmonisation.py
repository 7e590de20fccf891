"""Voxel-spacing harmonisation and CTP frames: the resampler against scipy, target grids, data at the
target left bit-identical, the inverse onto the exact source grid, a CTP on its own grid, frame
times from a sidecar / the header / the frame index, and refusals by name."""
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ldm.data.ingest.harmonisation import harmonise
from ldm.data.preprocessing.pipeline import CohortError, main, preprocess_cohort
from ldm.data.record import INDEX_FILE, load_index
from ldm.data.transforms.resampling import Grid, coverage, resample, target_grid
from ldm.data.synthetic.cohort import generate_patient, write_patient
from ldm.data.transforms.timepoints import FrameTimes, read_frame_times, resample_frames
from ldm.data.ingest.validation import load_patient
from ldm.data.preprocessing.reassembly import place_slices, slices_to_volume, volume_to_nifti

# oblique, about 1 x 1 x 5 mm (column norms 0.995, 0.995, 5.0003: within the 1 % tolerance)
AFFINE = np.array([[0.98, -0.17, 0.0, -20.5],
                   [0.17, 0.98, 0.05, -31.0],
                   [0.0, -0.01, 5.0, 12.25],
                   [0.0, 0.0, 0.0, 1.0]])
SOURCE_SHAPE = (36, 30, 7)


def _random_patient(folder, seed, ctp_only=False):
    """Random maps inside an elliptic brain (as tests/test_sampling.py's patients)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SOURCE_SHAPE[0]), np.arange(SOURCE_SHAPE[1]), indexing="ij")
    brain = ((x - 19) / 13) ** 2 + ((y - 14) / 12) ** 2 < 1
    mask = np.repeat(brain[..., None], SOURCE_SHAPE[2], axis=2)
    mask[..., [0, SOURCE_SHAPE[2] - 1]] = False
    ctp = rng.uniform(0, 150, size=SOURCE_SHAPE + (15,)) * mask[..., None]
    maps = {"ctp": ctp, "mask": mask}
    if not ctp_only:
        lesion = np.zeros(SOURCE_SHAPE, bool)
        lesion[15:20, 12:16, 3] = True
        maps.update(dwi=rng.uniform(100, 900, SOURCE_SHAPE) * mask, adc=rng.uniform(400, 3000, SOURCE_SHAPE) * mask,
                    lesion=lesion)
    folder.mkdir(parents=True)
    for name, array in maps.items():
        nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), AFFINE), str(folder / f"{name}.nii.gz"))


# SHA-256 of the arrays that preprocessing wrote for these two patients before spacing and frame
# harmonisation existed (commit ded9b72, ``preprocess_cohort(raw, out, size=(32, 32))``).
BEFORE = {
    ("P001", "ctp"): "c815ecf40d948f75945df4c47455728e567493514134aaddf76398c2b8e8b1bb",
    ("P001", "mri"): "f40b8c1c47f490e51518ed35b26d64e70074e9335fe7cb4ce724a6ed80de8fb7",
    ("P001", "mask"): "6084d018c17e1fc310e48f36294501af1730ae77c5b45eaaa4f180bc716b616a",
    ("P001", "lesion"): "627ce499fa0f0fe6f3f24cf7dce8f2a58453dc0680624a87521add10f541155e",
    ("P002", "ctp"): "06000867c5378cd7b1436a1296040b2e8547b328fd951d8fa43f0c2fb447a330",
    ("P002", "mask"): "6084d018c17e1fc310e48f36294501af1730ae77c5b45eaaa4f180bc716b616a",
}


def test_data_at_the_target_spacing_and_frame_count_is_written_as_before(tmp_path):
    raw = tmp_path / "raw"
    _random_patient(raw / "P001", 1)
    _random_patient(raw / "P002", 2, ctp_only=True)
    (raw / "P002" / "mask.nii.gz").unlink()  # derived from the CTP
    for name, spacing in (("paper", (1.0, 1.0, 5.0)), ("native", None)):
        preprocess_cohort(raw, tmp_path / name, size=(32, 32), spacing=spacing, progress=False,
                          window="reference_percentile")  # the normalisation the digests were taken with
        records = load_index(tmp_path / name)
        for (pid, array), digest in BEFORE.items():
            data = np.load(records[pid].array_path(array))
            assert hashlib.sha256(data.tobytes()).hexdigest() == digest, (name, pid, array)
        for record in records.values():
            assert not record.resampled and not record.ctp_resampled and record.sample_times is None
            assert record.timepoint_source == "as acquired" and record.source_timepoints == 15
    index = json.loads((tmp_path / "paper" / INDEX_FILE).read_text())
    assert index["spacing"] == [1.0, 1.0, 5.0] and index["version"] == 3
    assert json.loads((tmp_path / "native" / INDEX_FILE).read_text())["spacing"] == [0.9946, 0.9947, 5.0003]


def test_separable_resampling_equals_scipy_trilinear():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(20, 17, 9, 3)).astype(np.float32)
    affine = np.array([[0.0, -1.2, 0.0, 10.0], [0.9, 0.0, 0.0, -5.0], [0.0, 0.0, 4.0, 2.0], [0, 0, 0, 1]])
    source = Grid(volume.shape[:3], affine)
    for spacing in ((1.0, 1.0, 5.0), (0.5, 2.0, 1.5)):
        grid = target_grid(source, spacing)
        assert np.allclose(grid.zooms, spacing)
        # same orientation and field-of-view centre
        np.testing.assert_allclose(grid.affine[:3, :3] / grid.zooms, affine[:3, :3] / source.zooms, atol=1e-12)
        centre = lambda g: g.affine @ np.append((np.asarray(g.shape) - 1) / 2, 1)  # noqa: E731
        np.testing.assert_allclose(centre(grid), centre(source), atol=1e-9)
        assert not resample(np.ones(volume.shape[:3]), affine, grid, fill=-3.0).min() < 1  # covers it all
        shifted = grid.affine.copy()
        shifted[:3, 3] += 3.0 * grid.affine[:3, 0]  # three voxels along X: part of it outside the source
        grid = Grid(grid.shape, shifted)
        out = resample(volume, affine, grid, fill=-3.0)
        matrix = np.linalg.inv(affine) @ grid.affine
        # edge value within half a voxel of the outermost centres, ``fill`` beyond
        points = np.indices(grid.shape).reshape(3, -1).T @ matrix[:3, :3].T + matrix[:3, 3]
        outside = ~np.all((points >= -0.5) & (points <= np.asarray(volume.shape[:3]) - 0.5), axis=1)
        assert outside.any() and not outside.all()
        for t in range(volume.shape[3]):
            expected = ndimage.affine_transform(volume[..., t], matrix[:3, :3], matrix[:3, 3], output_shape=grid.shape,
                                                order=1, mode="nearest", prefilter=False)
            expected[outside.reshape(grid.shape)] = -3.0
            np.testing.assert_allclose(out[..., t], expected, atol=1e-5)
    # an oblique target (another orientation) goes through SimpleITK; masks by fraction > 0.5
    mask = np.zeros(volume.shape[:3], bool)
    mask[5:15, 4:12, 2:7] = True
    rotated = affine.copy()
    rotated[:3, :3] = affine[:3, :3] @ np.array([[0.96, -0.28, 0], [0.28, 0.96, 0], [0, 0, 1]])
    rotated[:3, 3] += 2.0  # partly outside the source
    grid = Grid((20, 17, 9), rotated)
    assert resample(mask, affine, grid, mask=True).dtype == bool
    matrix = np.linalg.inv(affine) @ rotated
    points = np.indices(grid.shape).reshape(3, -1).T @ matrix[:3, :3].T + matrix[:3, 3]
    outside = ~np.all((points >= -0.5) & (points <= np.asarray(volume.shape[:3]) - 0.5), axis=1).reshape(grid.shape)
    assert outside.any() and not outside.all()
    for layout in (np.ascontiguousarray, np.asfortranarray):  # NIfTI data come F-ordered
        out = resample(layout(volume), affine, grid, fill=-3.0)
        for t in range(volume.shape[3]):
            expected = ndimage.affine_transform(volume[..., t], matrix[:3, :3], matrix[:3, 3], output_shape=grid.shape,
                                                order=1, mode="nearest", prefilter=False)
            expected[outside] = -3.0
            np.testing.assert_allclose(out[..., t], expected, atol=1e-5)
    assert resample(volume, affine, source) is volume  # same grid: untouched
    assert coverage(source, grid) > 0.5 and coverage(Grid((3, 3, 3), affine + _far()), grid) == 0


def _trilinear_reference(volume, matrix, target_shape, fill):
    """An independent trilinear resampling: scipy's map_coordinates (order 1, float64) at the mapped
    points clipped to the outermost voxel centres (the edge value up to half a voxel beyond them),
    and ``fill`` where a point is more than half a voxel outside the source."""
    points = matrix[:3, :3] @ np.indices(target_shape, dtype=np.float64).reshape(3, -1) + matrix[:3, 3:]
    n = np.asarray(volume.shape[:3], dtype=np.float64)[:, None]
    outside = np.any((points < -0.5) | (points > n - 0.5), axis=0).reshape(target_shape)
    clipped = np.clip(points, 0.0, n - 1.0)
    frames = volume[..., None] if volume.ndim == 3 else volume
    out = np.stack([ndimage.map_coordinates(frames[..., t].astype(np.float64), clipped, order=1, prefilter=False)
                    .reshape(target_shape) for t in range(frames.shape[3])], axis=-1)
    out[outside] = fill
    return (out[..., 0] if volume.ndim == 3 else out), outside


def test_oblique_resampling_equals_map_coordinates_including_the_field_of_view_edge():
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(11, 9, 5, 3)).astype(np.float32)
    affine = np.array([[0.9, 0.0, 0.0, -4.0], [0.0, 1.1, 0.0, 3.0], [0.0, 0.0, 4.0, -7.0], [0, 0, 0, 1]])

    # 1. rotated 20 degrees about an oblique axis, coarser, shifted partly out of the source, fill -3
    axis = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])
    angle = np.radians(20.0)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    target = np.eye(4)
    target[:3, :3] = rotation @ np.diag([1.3, 1.2, 3.0])
    target[:3, 3] = affine[:3, 3] + [2.0, -1.5, 1.0]
    grid = Grid((10, 9, 7), target)
    matrix = np.linalg.inv(affine) @ target
    expected, outside = _trilinear_reference(volume, matrix, grid.shape, -3.0)
    assert outside.any() and not outside.all()
    for layout in (np.ascontiguousarray, np.asfortranarray):  # NIfTI data come F-ordered
        out = resample(layout(volume), affine, grid, fill=-3.0)
        assert out.shape == (*grid.shape, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(resample(volume[..., 1], affine, grid, fill=-3.0), expected[..., 1], rtol=0, atol=1e-5)
    # masks: the same interpolation of the indicator, kept where > 0.5
    mask = volume[..., 0] > 0.3
    indicator, _ = _trilinear_reference(mask.astype(np.float32), matrix, grid.shape, 0.0)
    assert not np.any(np.abs(indicator - 0.5) < 1e-4)  # no tie that float rounding could flip
    np.testing.assert_array_equal(resample(mask, affine, grid, mask=True), indicator > 0.5)

    # 2. the edge of the field of view is closed: a quarter turn with half-voxel shifts puts target
    # points exactly at index -0.5 and n - 0.5 (an affine of powers of two: exact in binary), which
    # take the edge value, not ``fill``
    exact = np.array([[0.5, 0.0, 0.0, -4.0], [0.0, 1.0, 0.0, 3.0], [0.0, 0.0, 4.0, -8.0], [0, 0, 0, 1]])
    quarter = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    target = np.eye(4)
    target[:3, :3] = exact[:3, :3] @ quarter
    target[:3, 3] = exact[:3, :3] @ np.array([10.5, -0.5, -0.5]) + exact[:3, 3]
    grid = Grid((10, 13, 7), target)  # one more row and slice than the source covers
    matrix = np.linalg.inv(exact) @ target
    points = matrix[:3, :3] @ np.indices(grid.shape, dtype=np.float64).reshape(3, -1) + matrix[:3, 3:]
    n = np.asarray(volume.shape[:3])[:, None]
    assert np.any(points == n - 0.5) and np.any(points == -0.5)
    expected, outside = _trilinear_reference(volume, matrix, grid.shape, -3.0)
    assert outside.any() and not outside.all()
    np.testing.assert_allclose(resample(volume, exact, grid, fill=-3.0), expected, rtol=0, atol=1e-5)

    # 3. a single-slice source: the one slice is the edge value within half a slice of it
    thin = volume[:, :, 2:3, 0]
    target = np.eye(4)
    target[:3, :3] = exact[:3, :3] @ np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 0.25]])
    target[:3, 3] = exact[:3, :3] @ np.array([1.0, -0.5, -0.5]) + exact[:3, 3]
    grid = Grid((9, 9, 7), target)  # slices 0..6 at source z index -0.5, -0.25, ..., 1.0: 5 and 6 outside
    matrix = np.linalg.inv(exact) @ target
    expected, outside = _trilinear_reference(thin, matrix, grid.shape, -3.0)
    assert outside[..., 5:].all() and not outside[..., 0].all() and not outside[..., 4].all()
    np.testing.assert_allclose(resample(thin, exact, grid, fill=-3.0), expected, rtol=0, atol=1e-5)


def _far():
    shift = np.zeros((4, 4))
    shift[:3, 3] = 1000.0
    return shift


@pytest.fixture(scope="module")
def demo_patient():
    """A synthetic patient at 3.5 x 3.5 x 5 mm, 6 slices."""
    return generate_patient([4, 1], size=(64, 64), n_slices=6, n_timepoints=15, patient_id="S001",
                            lesion_volume_ml=30.0, lesion_territory="MCA deep")


def test_resampled_patient_goes_back_onto_the_exact_source_grid(tmp_path, demo_patient):
    p = demo_patient
    write_patient(p, tmp_path / "raw" / p.patient_id)
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=(96, 96), spacing=(2.0, 2.0, 4.0), progress=False)
    record = load_index(tmp_path / "npy")[p.patient_id]
    assert record.resampled and record.model_shape[:2] == (112, 112) and record.spacing == (2.0, 2.0, 4.0)
    assert record.source_shape == p.dwi.shape
    np.testing.assert_allclose(record.affine, p.affine)
    mri = np.load(record.array_path("mri")).astype(np.float32)
    mask = np.load(record.array_path("mask"))
    truth = p.mask > 0
    for channel, modality in enumerate(("dwi", "adc")):
        model_range = np.where(mask > 0, np.clip(mri[:, channel], 0, 1) * 2 - 1, -1.0)
        volume = slices_to_volume(model_range, record, modality)
        assert volume.shape == p.dwi.shape
        image = volume_to_nifti(volume, record, modality)
        assert image.shape == p.dwi.shape and np.allclose(image.affine, p.affine, atol=1e-5)
        back = volume > 0
        dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
        assert dice > 0.95, (modality, dice)
        source = np.clip(getattr(p, modality), *record.intensity_range(modality))
        inside = back & truth
        # down to 2 x 2 x 4 mm and back up to 3.5 x 3.5 x 5 mm blurs, but stays close
        error = np.abs(volume[inside] - source[inside]).mean() / np.abs(source[inside]).mean()
        assert error < 0.1, (modality, error)
    ctp_grid = place_slices(np.load(record.array_path("ctp")).astype(np.float32), record)
    assert ctp_grid.shape == (*record.model_shape, 15)


def test_ctp_on_its_own_grid_is_resampled_onto_the_dwis(tmp_path, demo_patient):
    p = demo_patient
    write_patient(p, tmp_path / "same" / p.patient_id)
    write_patient(p, tmp_path / "own" / p.patient_id, maps=("dwi", "adc", "mask", "lesion"))
    # the CTP on a twice finer in-plane grid whose every other point is a DWI voxel centre:
    # linear interpolation back onto the DWI grid then gives the original values
    fine = p.affine @ np.diag([0.5, 0.5, 1.0, 1.0])
    grid = Grid((2 * p.ctp.shape[0] - 1, 2 * p.ctp.shape[1] - 1, p.ctp.shape[2]), fine)
    upsampled = resample(p.ctp, p.affine, grid)
    nib.save(nib.Nifti1Image(upsampled, fine), str(tmp_path / "own" / p.patient_id / "ctp.nii.gz"))
    for name in ("same", "own"):
        preprocess_cohort(tmp_path / name, tmp_path / f"npy_{name}", size=(64, 64), progress=False)
    same = load_index(tmp_path / "npy_same")[p.patient_id]
    own = load_index(tmp_path / "npy_own")[p.patient_id]
    assert own.ctp_resampled and not own.resampled and not same.ctp_resampled
    assert own.slice_indices == same.slice_indices
    np.testing.assert_allclose(np.load(own.array_path("ctp")).astype(np.float32),
                               np.load(same.array_path("ctp")).astype(np.float32), atol=1e-3)

    # a CTP that is not registered to the DWI (here 300 mm away) is refused by name
    far = fine.copy()
    far[:3, 3] += 300.0
    nib.save(nib.Nifti1Image(upsampled, far), str(tmp_path / "own" / p.patient_id / "ctp.nii.gz"))
    with pytest.raises(CohortError) as error:
        preprocess_cohort(tmp_path / "own", tmp_path / "npy_far", size=(64, 64), progress=False)
    message = error.value.summary.failures[p.patient_id]
    assert message.startswith(f"patient {p.patient_id}: ctp.nii.gz covers 0% of the brain mask of dwi.nii.gz's grid")
    assert "register_ctp.py" in message and "\n" not in message
    assert not (tmp_path / "npy_far" / p.patient_id).exists()

    # a mask on another grid than the DWI's is refused by name
    write_patient(p, tmp_path / "badmask" / p.patient_id)
    nib.save(nib.Nifti1Image(np.ones(grid.shape, np.uint8), fine),
             str(tmp_path / "badmask" / p.patient_id / "mask.nii.gz"))
    with pytest.raises(CohortError) as error:
        preprocess_cohort(tmp_path / "badmask", tmp_path / "npy_badmask", size=(64, 64), progress=False)
    assert error.value.summary.failures[p.patient_id].startswith(
        f"patient {p.patient_id}: mask.nii.gz has shape 127x127x6, dwi.nii.gz has 64x64x6")


def test_frames_are_resampled_on_their_acquisition_times():
    # a signal linear in time is reproduced exactly at the new times, whatever the spacing of the old
    seconds = (0.0, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0, 36.0, 42.0, 50.0, 60.0,
               70.0, 80.0, 90.0)
    slope = np.random.default_rng(0).uniform(-2, 2, size=(4, 3, 2))
    ctp = (100.0 + slope[..., None] * np.asarray(seconds)).astype(np.float32)
    out, samples = resample_frames(ctp, FrameTimes(seconds, "test"), 15)
    np.testing.assert_allclose(samples, np.linspace(0, 90, 15))
    np.testing.assert_allclose(out, 100.0 + slope[..., None] * samples, rtol=1e-5)
    # without times: uniform over the frame index
    out, samples = resample_frames(ctp, FrameTimes(None, "frame index"), 15)
    np.testing.assert_allclose(samples, np.linspace(0, 19, 15))
    np.testing.assert_allclose(out[..., -1], ctp[..., -1])
    np.testing.assert_allclose(out[..., 0], ctp[..., 0])
    same, none = resample_frames(ctp[..., :15], FrameTimes(None, "frame index"), 15)
    assert same is not None and none is None and np.shares_memory(same, ctp)
    with pytest.raises(ValueError, match="fewer frames"):
        resample_frames(ctp[..., :10], FrameTimes(None, "frame index"), 15)


def test_frame_times_come_from_a_sidecar_the_header_or_the_frame_index(tmp_path, demo_patient):
    p = demo_patient
    n = 24
    times = np.concatenate([np.arange(0, 32, 2.0), 32 + 3.0 * np.arange(1, 9)])  # 2 s, then 3 s
    assert times.size == n
    # the bolus at 15 points of 0..42 s as the cohort, sampled at the clinical times: a CTP of 24 frames
    t15 = np.linspace(0, 42, 15)
    long_ctp = np.stack([np.stack([np.interp(t, t15, v) for t in times]) for v in
                         p.ctp.reshape(-1, 15).astype(np.float32)]).reshape(*p.ctp.shape[:3], n)
    folder = tmp_path / "raw" / "LONG"
    write_patient(p, folder)
    image = nib.Nifti1Image(long_ctp.astype(np.float32), p.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    nib.save(image, str(folder / "ctp.nii.gz"))
    (folder / "ctp.json").write_text(json.dumps({"FrameTimesStart": times.tolist()}))

    read = read_frame_times(folder / "ctp.nii.gz", nib.load(str(folder / "ctp.nii.gz")).header, n)
    assert read.source == "sidecar ctp.json FrameTimesStart" and read.seconds == tuple(times)
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=(64, 64), progress=False)
    record = load_index(tmp_path / "npy")["LONG"]
    assert record.source_timepoints == n and record.n_timepoints == 15
    assert record.timepoint_source == "sidecar ctp.json FrameTimesStart" and record.frame_times == times.tolist()
    np.testing.assert_allclose(record.sample_times, np.linspace(0, 56, 15))
    stored = np.load(record.array_path("ctp")).astype(np.float32) * 200.0  # (S, 15, H, W), HU
    expected = resample_frames(long_ctp, FrameTimes(tuple(times), "x"), 15)[0]
    z = record.slice_indices[2]
    (x0, x1), (y0, y1) = record.crop
    np.testing.assert_allclose(stored[2][:, :x1 - x0, :y1 - y0], np.moveaxis(expected[x0:x1, y0:y1, z], -1, 0),
                               atol=0.2, rtol=2 ** -10)

    # header only (uniform 2 s steps), then no times at all (frame index); clock times in a sidecar
    (folder / "ctp.json").unlink()
    header = nib.load(str(folder / "ctp.nii.gz")).header
    assert read_frame_times(folder / "ctp.nii.gz", header, n) == FrameTimes(tuple(2.0 * k for k in range(n)),
                                                                             "header pixdim[4]")
    header.set_xyzt_units("mm", "unknown")
    assert read_frame_times(folder / "ctp.nii.gz", header, n) == FrameTimes(None, "frame index")
    (folder / "ctp.json").write_text(json.dumps({"AcquisitionTimes": [f"10:00:{s:06.3f}" for s in 5 + times / 2]}))
    assert read_frame_times(folder / "ctp.nii.gz", header, n).seconds == tuple(times / 2)
    (folder / "ctp.json").write_text(json.dumps({"FrameTimesStart": [0, 1, 2]}))
    with pytest.raises(CohortError) as error:
        preprocess_cohort(tmp_path / "raw", tmp_path / "npy2", size=(64, 64), progress=False)
    assert error.value.summary.failures["LONG"] == ("patient LONG: ctp.nii.gz: ctp.json: FrameTimesStart has 3 "
                                                    "entries, ctp.nii.gz has 24 frames")


def test_command_line_spacing_and_timepoints(tmp_path, demo_patient):
    write_patient(demo_patient, tmp_path / "raw" / "S001")
    assert main(["--input_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "a"), "--size", "64", "64",
                 "--spacing", "3.5", "3.5", "5"]) == 0
    assert not load_index(tmp_path / "a")["S001"].resampled
    assert main(["--input_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "b"), "--size", "64", "64",
                 "--spacing", "native", "--timepoints", "12"]) == 0
    record = load_index(tmp_path / "b")["S001"]
    assert record.n_timepoints == 12 and record.timepoint_source == "header pixdim[4]"
    assert np.load(record.array_path("ctp")).shape[1] == 12
    with pytest.raises(SystemExit):
        main(["--input_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "c"), "--spacing", "1", "1"])


def test_harmonise_leaves_arrays_alone_at_the_target(tmp_path, demo_patient):
    write_patient(demo_patient, tmp_path / "S001")
    volumes = load_patient(tmp_path / "S001")
    out, h = harmonise(volumes, (3.5, 3.5, 5.0), 15)
    assert not h.resampled and out.ctp is volumes.ctp and out.dwi is volumes.dwi and h.sample_times is None
