"""A run that carries what inference needs: SetupCallback stores the training split's contract
(spacing, size, frames, slice rule) and cohort reference in the run folder; sample_LDM.py then
samples a raw CTP-only folder at another voxel size, with more frames and a skull, on a machine
without the training data, and writes DWI/ADC on the CTP's own grid in physical units; a
preprocessed split made at another spacing is refused naming both."""
import json
import shutil
import types

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.callbacks.setup import SetupCallback
from ldm.data.preprocessing.contract import CONTRACT_FILE, DataContract, load_run_contract
from ldm.data.synthetic.skull import add_skull
from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_reference
from ldm.data.transforms.resampling import Grid, resample
from tests.helpers.raw_patients import SIZE, write_raw_patient
from tests.helpers.sampling_runs import build_model, save_run, tiny_config
from tests.helpers.scripts import error_line as script_error_line
from tests.helpers.scripts import load_script

sample_script = load_script("sample_LDM")


def error_line(stderr: str) -> str:
    return script_error_line(stderr, "sample_LDM.py")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _clinical_ctp(folder, seed=5, n_frames=22):
    """A CTP-only patient as a scanner gives it: 0.8 x 0.8 x 4 mm, 22 frames, skull and air, no mask."""
    rng = np.random.default_rng(seed)
    voxel = (0.8, 0.8, 4.0)
    shape = (40, 36, 9)
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = (-16.0, -14.0, 3.0)
    affine[:3, :3] = np.array([[0.99, -0.14, 0], [0.14, 0.99, 0], [0, 0, 1.0]]) @ affine[:3, :3]
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    brain = ((x - 20) / 12) ** 2 + ((y - 18) / 11) ** 2 + ((z - 4) / 3.5) ** 2 < 1
    times = np.sort(rng.uniform(0, 50, n_frames))
    times[0], times[-1] = 0.0, 50.0
    bolus = 30 + 40 * np.exp(-((times - 20) / 6) ** 2)
    ctp = (bolus[None, None, None] + rng.normal(0, 3, shape + (n_frames,))) * brain[..., None]
    head = add_skull(ctp.astype(np.int16), brain, voxel, rng)
    folder.mkdir(parents=True)
    image = nib.Nifti1Image(head, affine)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(folder / "ctp.nii.gz"))
    (folder / "ctp.json").write_text(json.dumps({"FrameTimesStart": times.tolist()}))
    return affine, shape, brain


def test_a_run_folder_alone_samples_a_raw_ctp_on_its_own_grid(tmp_path, capsys):
    root = tmp_path
    write_raw_patient(root / "raw_train" / "P010", 10)
    npy = root / "npy"  # the training split: 1 x 1 x 5 mm (the tiny model's 32 x 32)
    preprocess_cohort(root / "raw_train", npy, size=SIZE, spacing=(1.0, 1.0, 5.0), progress=False)
    config = tiny_config(npy)
    torch.manual_seed(0)
    run = save_run(root / "logs" / "2025-01-01T00-00-00_tiny", config, build_model(config).state_dict())
    # what main.py's SetupCallback writes when training starts
    callback = SetupCallback("2025-01-01T00-00-00", str(run), str(run / "checkpoints"), str(run / "configs"),
                             OmegaConf.create(config), OmegaConf.create({}))
    callback.setup(types.SimpleNamespace(is_global_zero=True), None, "fit")
    contract = load_run_contract(run)
    assert contract.spacing == (1.0, 1.0, 5.0) and contract.size == SIZE and contract.n_timepoints == 15
    assert contract.slice_rule == "reference" and contract.reference == load_reference(npy)
    assert load_reference(run) == load_reference(npy)
    assert json.loads((run / CONTRACT_FILE).read_text())["index_version"] == 3

    reference = load_reference(npy)
    shutil.rmtree(npy)  # another machine: nothing but the run
    shutil.rmtree(root / "raw_train")
    affine, shape, brain = _clinical_ctp(root / "clinical" / "C001")
    out = root / "samples"
    rc = sample_script.main(["-r", str(run), "--data", str(root / "clinical"), "--outdir", str(out), "--steps", "2",
                             "--device", "cpu", "--no_progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "the run expects 1 x 1 x 5 mm, 32 x 32, 15 CTP frames" in printed.out
    assert "1 CTP-only patient(s)" in printed.out
    assert contract.window == reference.window  # the raw CTP was preprocessed under the run's window
    for modality in ("dwi", "adc"):
        image = nib.load(str(out / "C001" / f"{modality}_sample_0.nii.gz"))
        assert image.shape == shape
        # the range the model could write, from the run's reference, is in the header
        assert (float(image.header["cal_min"]), float(image.header["cal_max"])) == pytest.approx(
            reference.intensity_range(modality), rel=1e-6)
        np.testing.assert_allclose(image.affine, affine, atol=1e-5)
        data = image.get_fdata()
        lo, hi = reference.intensity_range(modality)
        inside = data != 0
        assert inside.any() and (data[inside] >= lo - 1e-3).all() and (data[inside] <= hi + 1e-3).all()
        # skull-stripped on the way: nothing synthesised outside the (derived) brain, which is the brain
        grown = resample(brain, affine, Grid(shape, affine), mask=True)
        assert not (inside & ~_dilated(grown)).any()


def _dilated(mask):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=2)


def test_a_split_preprocessed_at_another_spacing_is_refused(tmp_path, capsys):
    write_raw_patient(tmp_path / "raw" / "P010", 10)
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=SIZE, spacing=(1.0, 1.0, 5.0), progress=False)
    config = tiny_config(tmp_path / "npy")
    run = save_run(tmp_path / "run", config, build_model(config).state_dict())
    (run / CONTRACT_FILE).write_text(json.dumps(DataContract.from_split(tmp_path / "npy").to_json()))
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy2", size=SIZE, spacing=(1.0, 1.0, 2.5), progress=False)
    rc = sample_script.main(["-r", str(run), "--data", str(tmp_path / "npy2"), "--outdir", str(tmp_path / "o"),
                             "--steps", "2", "--device", "cpu", "--no_progress"])
    message = error_line(capsys.readouterr().err)
    assert rc == 2
    assert "spacing 1 x 1 x 2.5 mm (the run: 1 x 1 x 5 mm; --spacing 1 1 5)" in message
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.nii.gz"))
    # the same for a split preprocessed under another intensity window
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy3", size=SIZE, spacing=(1.0, 1.0, 5.0), progress=False,
                      window="reference_percentile")
    rc = sample_script.main(["-r", str(run), "--data", str(tmp_path / "npy3"), "--outdir", str(tmp_path / "o"),
                             "--steps", "2", "--device", "cpu", "--no_progress"])
    message = error_line(capsys.readouterr().err)
    assert rc == 2 and "the window reference_percentile" in message and "--window lesion" in message
