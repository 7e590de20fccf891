"""The sampler study (ldm/experiments/sampler_study*.py) on a tiny run, through scripts/sampler_study.py
and the package: every setting sampled from the same seeds, timed, scored with evaluate.py's code
against the ground truth and against the first setting; mistakes are one line."""
import nibabel as nib
import numpy as np
import pytest
import torch

from ldm.evaluation.aggregate import per_run
from ldm.evaluation.evaluator import evaluate_runs
from ldm.experiments.runner import ExperimentError
from ldm.experiments.sampler_study import SamplerStudy, parse_setting, run_sampler_study
from tests.helpers.raw_patients import write_raw_patient
from tests.helpers.sampling_runs import build_model, save_run, tiny_config
from tests.helpers.scripts import error_line, load_script, read_csv

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

study_script = load_script("sampler_study")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ldm.data.preprocessing.pipeline import preprocess_cohort
    from tests.helpers.raw_patients import SIZE

    root = tmp_path_factory.mktemp("study")
    raw = root / "raw"
    for i in (1, 2):
        write_raw_patient(raw / f"P00{i}", i)
    npy = root / "npy"
    preprocess_cohort(raw, npy, size=SIZE, progress=False)
    config = tiny_config(npy)
    torch.manual_seed(0)
    model = build_model(config)
    g = torch.Generator().manual_seed(4)
    state = model.state_dict()
    for key in state:  # a non-zero UNet output (CompVis zero-initialises the last convolution)
        if "diffusion_model.out." in key:
            state[key] = 0.05 * torch.randn(state[key].shape, generator=g)
    return save_run(root / "logs" / "tiny", config, state), raw, npy


def test_study_samples_times_and_scores_every_setting(run, tmp_path, capsys):
    run_dir, raw, npy = run
    out = tmp_path / "study"
    argv = ["-r", str(run_dir), "--data", str(npy), "--gt", str(raw), "--outdir", str(out), "--device", "cpu",
            "--settings", "ddim:6", "ddim:2", "dpmsolver++:3", "--batch_size", "3", "--no_progress"]
    assert study_script.main(argv) == 0
    rows = read_csv(out / "sampler_study.csv")
    assert [(r["setting"], r["modality"]) for r in rows] == [
        (s, m) for s in ("DDIM-6", "DDIM-2", "DPM-Solver++-3") for m in ("dwi", "adc")]
    # the scores against the ground truth are evaluate.py's for the same folders
    folders = {"DDIM-6": out / "samples" / "ddim_6", "DPM-Solver++-3": out / "samples" / "dpmsolver++_3"}
    expected = {(r["run"], r["modality"]): r for r in per_run(evaluate_runs(folders, raw, log=lambda m: None))}
    for r in rows:
        if r["setting"] in folders:
            e = expected[(r["setting"], r["modality"])]
            assert float(r["gt_mae"]) == pytest.approx(e["mae"]) and float(r["gt_psnr"]) == pytest.approx(e["psnr"])
    reference = [r for r in rows if r["setting"] == "DDIM-6"]
    assert all(r["ref_mae"] == "" and float(r["speedup_vs_reference"]) == 1.0 for r in reference)
    others = [r for r in rows if r["setting"] != "DDIM-6"]
    assert all(float(r["ref_mae"]) > 0 and r["lesion_mae_diff_ci_low"] != "" for r in others)
    # "to the reference" really is the distance to DDIM-6's volumes: DDIM-6 against itself scores 0
    cohort = out / "reference_as_truth"
    self_score = per_run(evaluate_runs({"self": folders["DDIM-6"]}, cohort, log=lambda m: None))
    assert all(r["mae"] == pytest.approx(0.0, abs=1e-7) for r in self_score)
    # timing: more steps take longer per slice
    seconds = {r["setting"]: float(r["seconds_per_slice"]) for r in rows}
    assert seconds["DDIM-6"] > seconds["DDIM-2"] > 0
    assert (out / "sampler_study.png").stat().st_size > 0
    assert "| DPM-Solver++-3 |" in (out / "sampler_study.md").read_text()
    # a second run, through the package, reuses the samples and their timing
    stamps = {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.nii.gz")}
    again = SamplerStudy(run=str(run_dir), data=str(npy), gt=raw, outdir=out, device="cpu", batch_size=3,
                         settings=[("ddim", 6), ("ddim", 2), ("dpmsolver++", 3)], progress=False)
    assert run_sampler_study(again).csv == out / "sampler_study.csv"
    assert {p: p.stat().st_mtime_ns for p in (out / "samples").rglob("*.nii.gz")} == stamps
    assert [float(r["seconds_per_slice"]) for r in read_csv(out / "sampler_study.csv")] == \
        [float(r["seconds_per_slice"]) for r in rows]
    # the same x_T per slice in every setting: DPM-Solver++ and DDIM land near each other
    def dwi(folder):
        return np.asarray(nib.load(str(folder / "P001" / "dwi_sample_0.nii.gz")).dataobj)

    assert np.abs(dwi(folders["DDIM-6"]) - dwi(folders["DPM-Solver++-3"])).mean() < \
        np.abs(dwi(folders["DDIM-6"])).mean()
    capsys.readouterr()


def test_bad_settings_are_one_line(run, tmp_path, capsys):
    assert parse_setting("dpmsolver++:20") == ("dpmsolver++", 20)
    for bad in ("euler:10", "ddim", "ddim:0", "ddim:x"):
        with pytest.raises(ExperimentError, match="expected <sampler>:<steps>"):
            parse_setting(bad)
    run_dir, raw, npy = run
    base = ["-r", str(run_dir), "--data", str(npy), "--outdir", str(tmp_path / "s"), "--device", "cpu"]
    assert study_script.main([*base, "--gt", str(raw), "--settings", "euler:10"]) == 2
    assert "euler:10" in error_line(capsys.readouterr().err, "sampler_study.py")
    assert study_script.main([*base, "--gt", str(raw), "--settings", "ddim:3", "ddim:3"]) == 2
    assert "twice" in error_line(capsys.readouterr().err, "sampler_study.py")
    assert study_script.main(base) == 2  # a preprocessed split and no ground truth
    assert "--gt" in error_line(capsys.readouterr().err, "sampler_study.py")
    assert not (tmp_path / "s").exists()
    # a setting sampled with another seed is refused, naming its record, and nothing is sampled
    study = SamplerStudy(run=str(run_dir), data=str(npy), gt=raw, outdir=tmp_path / "t", device="cpu",
                         settings=[("ddim", 2)], progress=False)
    record = study.folder("ddim", 2) / "timing.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"seed": 5}')
    with pytest.raises(ExperimentError, match="seed=5.*now.*seed=23") as e:
        run_sampler_study(study)
    assert str(record) in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in record.parent.iterdir()) == ["timing.json"]
