"""The synthetic cohort: determinism, geometry, and the stroke physiology the model must learn."""
import hashlib
import math

import nibabel as nib
import numpy as np
import pytest

from ldm.data.synthetic.anatomy import inplane_voxel_mm
from ldm.data.synthetic.perfusion import gamma_variate
from ldm.data.synthetic.cohort import MAPS, generate_cohort, generate_patient, main, parse_size, strip_to_ctp_only

TINY = (32, 32)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.nii.gz"))}


def test_same_seed_writes_the_same_files(tmp_path):
    kwargs = dict(n_train=1, n_val=1, n_test=0, size=TINY, n_slices=3, n_timepoints=4, progress=False)
    generate_cohort(tmp_path / "a", seed=3, **kwargs)
    generate_cohort(tmp_path / "b", seed=3, **kwargs)
    generate_cohort(tmp_path / "c", seed=4, **kwargs)
    a, b, c = (_digests(tmp_path / name) for name in "abc")
    assert sorted(a) == [f"{split}/{pid}/{m}.nii.gz" for split, pid in (("train", "P0001"), ("val", "P0002"))
                         for m in sorted(MAPS)]
    assert a == b
    assert a["train/P0001/ctp.nii.gz"] != c["train/P0001/ctp.nii.gz"]


def test_files_have_the_layout_types_and_a_real_oblique_affine(tmp_path):
    generate_cohort(tmp_path, 1, 0, 0, size=TINY, n_slices=4, n_timepoints=15, seed=0, progress=False)
    folder = tmp_path / "train" / "P0001"
    images = {m: nib.load(str(folder / f"{m}.nii.gz")) for m in MAPS}
    assert images["ctp"].shape == (32, 32, 4, 15)
    assert images["ctp"].get_data_dtype() == np.int16
    for m in ("dwi", "adc", "mask", "lesion"):
        assert images[m].shape == (32, 32, 4)
        np.testing.assert_array_equal(images[m].affine, images["ctp"].affine)
    affine = images["dwi"].affine
    voxel = inplane_voxel_mm(TINY)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [voxel, voxel, 5.0], rtol=1e-5)
    rotation = affine[:3, :3] / np.array([voxel, voxel, 5.0])
    assert np.abs(rotation - np.eye(3)).max() > 0.02  # oblique, not axis-aligned
    assert np.linalg.norm(affine[:3, 3]) > 1.0
    assert images["dwi"].header.get_xyzt_units() == ("mm", "sec")
    assert images["dwi"].header["descrip"].tobytes().startswith(b"DWI b=1000")
    assert set(np.unique(np.asarray(images["mask"].dataobj))) == {0, 1}


def test_voxel_size_is_1mm_at_paper_scale_and_grows_for_demo_sizes():
    assert inplane_voxel_mm(parse_size("paper")) == 1.0
    assert parse_size("paper") == (192, 224) and parse_size("demo") == (64, 64) and parse_size("96x80") == (96, 80)
    demo = inplane_voxel_mm(parse_size("demo"))
    assert demo > 1.0 and 181.0 / demo <= 64  # the 181 mm long brain fits the demo grid
    with pytest.raises(ValueError, match="HxW"):
        parse_size("big")


def test_gamma_variate_peaks_at_one_at_t0_plus_alpha_beta():
    t = np.linspace(0, 40, 4001)
    curve = gamma_variate(t, 5.0, 2.0, alpha=3.0)
    assert curve[t <= 5.0].max() == 0.0
    assert t[np.argmax(curve)] == pytest.approx(11.0, abs=0.01)
    assert curve.max() == pytest.approx(1.0, abs=1e-6)
    # hand value: s = (9 - 5) / 2 = 2 -> (2/3)^3 e^(3-2)
    assert gamma_variate(np.array([9.0]), 5.0, 2.0, alpha=3.0)[0] == pytest.approx((2 / 3) ** 3 * math.e)


@pytest.fixture(scope="module")
def centred_patient():
    # No head variation: MNI x = 0 is the middle of the first axis, so a flip is the mirror image.
    return generate_patient(11, size=(48, 56), n_slices=6, vary=False, lesion_volume_ml=25.0,
                            lesion_territory="MCA deep")


def test_lesion_is_bright_on_dwi_dark_on_adc_and_hypoperfused_versus_mirror(centred_patient):
    p = centred_patient
    lesion = p.lesion.astype(bool)
    mirror = lesion[::-1]
    only = lesion & ~mirror  # lesion voxels whose mirror image is healthy
    assert only.sum() >= 10
    healthy = only[::-1]
    assert p.mask[healthy].all()
    assert p.dwi[only].mean() > 1.3 * p.dwi[healthy].mean()
    assert p.adc[only].mean() < 0.8 * p.adc[healthy].mean()
    peak = p.ctp.max(axis=-1).astype(float)
    assert peak[only].mean() < peak[healthy].mean() - 5.0
    time_to_peak = np.argmax(p.ctp, axis=-1)
    assert time_to_peak[only].mean() > time_to_peak[healthy].mean()


def test_adc_values_are_physiological(centred_patient):
    p = centred_patient
    brain = p.mask.astype(bool)
    adc_core = np.median(p.adc[p.lesion.astype(bool)])
    assert 380 < adc_core < 650  # 400-550 in pure core, some CSF partial volume and noise
    assert 650 < np.median(p.adc[brain & ~p.lesion.astype(bool)]) < 1100  # mostly tissue (~700-830)
    assert np.percentile(p.adc[brain], 99) > 2000  # ventricles and sulci towards 3000
    assert (p.adc[~brain] == 0).all() and (p.dwi[~brain] == 0).all() and (p.ctp[~brain] == 0).all()


def test_no_lesion_patient_and_ctp_only_patients(tmp_path):
    p = generate_patient(2, size=TINY, n_slices=3, n_timepoints=5, lesion_volume_ml=0)
    assert p.lesion.sum() == 0 and p.info["lesion_ml"] == 0
    generate_cohort(tmp_path, 1, 0, 0, size=TINY, n_slices=3, n_timepoints=5, n_clinical=1, progress=False)
    assert sorted(f.name for f in (tmp_path / "clinical" / "P0002").iterdir()) == ["ctp.nii.gz", "mask.nii.gz"]
    strip_to_ctp_only(tmp_path / "train" / "P0001", keep_mask=False)
    assert [f.name for f in (tmp_path / "train" / "P0001").iterdir()] == ["ctp.nii.gz"]


def test_command_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--size", "32x32", "--n_train", "1", "--n_val", "0", "--n_test", "0",
                 "--slices", "3", "--timepoints", "4", "--n_clinical", "1", "--clinical_without_mask"]) == 0
    assert "train: 1 patients" in capsys.readouterr().out
    assert nib.load(str(tmp_path / "train" / "P0001" / "ctp.nii.gz")).shape == (32, 32, 3, 4)
    assert [f.name for f in (tmp_path / "clinical" / "P0002").iterdir()] == ["ctp.nii.gz"]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--size", "huge"])


def test_lesion_volume_law_quantiles_and_strata():
    from scipy import stats

    from ldm.data.synthetic.lesion import (P_NO_LESION, VOLUME_LOG_MEAN, VOLUME_LOG_SD, VOLUME_RANGE_ML,
                                       stratified_quantiles, volume_at_quantile)

    assert volume_at_quantile(0.0) == 0.0 and volume_at_quantile(P_NO_LESION - 1e-9) == 0.0
    # the median lesion is the log-normal's median, exp(mu); quantiles map through the normal's
    assert volume_at_quantile(P_NO_LESION + 0.5 * (1 - P_NO_LESION)) == pytest.approx(np.exp(VOLUME_LOG_MEAN))
    q = P_NO_LESION + 0.9 * (1 - P_NO_LESION)
    assert volume_at_quantile(q) == pytest.approx(np.exp(VOLUME_LOG_MEAN + VOLUME_LOG_SD * stats.norm.ppf(0.9)))
    assert volume_at_quantile(1 - 1e-12) == VOLUME_RANGE_ML[1] and volume_at_quantile(P_NO_LESION) == VOLUME_RANGE_ML[0]
    with pytest.raises(ValueError):
        volume_at_quantile(1.0)
    strata = stratified_quantiles(np.random.default_rng(0), 10)
    assert sorted(np.floor(strata * 10).astype(int)) == list(range(10))  # one quantile per tenth
    # the law's moments by Monte Carlo over its quantiles: mean about 15-20 ml, heavy-tailed, clipped
    volumes = np.array([volume_at_quantile(v) for v in np.random.default_rng(1).random(200_000)])
    lesion = volumes[volumes > 0]
    assert abs(len(lesion) / len(volumes) - (1 - P_NO_LESION)) < 0.01
    assert 14 < lesion.mean() < 20 and 40 < lesion.std() < 65 and 2 < np.median(lesion) < 3


def test_the_demo_test_split_has_four_patients_with_two_ml_of_lesion(tmp_path):
    """scripts/demo.sh's test split (10 patients, stratified lesion volumes, the whole brain)."""
    import json

    generate_cohort(tmp_path, 0, 0, 10, size="demo", seed=0, progress=False)
    volumes = [p["lesion_ml"] for p in json.loads((tmp_path / "cohort.json").read_text())["patients"]["test"].values()]
    assert sum(v >= 2.0 for v in volumes) >= 4 and sum(v == 0 for v in volumes) >= 2


# sha256 of nilearn 0.14.1's nilearn/datasets/data/ files (mni152/NOTICE): the copies in the
# repository must stay those bytes, or every synthetic cohort changes.
NILEARN_0_14_1_SHA256 = {
    "t1": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "gm": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    "wm": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
}


def test_template_files_are_nilearns_bytes_and_need_no_nilearn(monkeypatch):
    import builtins

    from ldm.data.synthetic import mni_template

    folder = mni_template.template_dir()
    for key, name in mni_template.TEMPLATE_FILES.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == NILEARN_0_14_1_SHA256[key], name
    real_import = builtins.__import__

    def no_nilearn(name, *args, **kwargs):
        if name.split(".")[0] in ("nilearn", "pandas", "sklearn"):
            raise ImportError(f"{name} is not a dependency")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nilearn)
    mni_template._raw_template.cache_clear()
    try:
        raw = mni_template._raw_template()
    finally:
        mni_template._raw_template.cache_clear()
    assert raw.channels.shape == (4, 197, 233, 189)
    np.testing.assert_allclose(raw.affine[:3, 3], [-98.0, -134.0, -72.0])


def test_missing_template_file_is_named(tmp_path, monkeypatch):
    from ldm.data.synthetic import mni_template

    monkeypatch.setattr(mni_template, "TEMPLATE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"):
        mni_template.template_dir()
