"""The intensity window: the ranges each window gives (against hand computations), the refusals of
windows that cannot keep the lesion, its records, and the preprocessing command's one-line errors."""
import json

import numpy as np
import pytest

from ldm.data.transforms.intensity_window import IntensityWindow, WindowError, brain_median
from ldm.data.preprocessing.pipeline import main as preprocess_main
from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_index, load_reference
from ldm.data.synthetic.cohort import generate_patient, write_patient


def _volume(seed=0):
    rng = np.random.default_rng(seed)
    volume = rng.gamma(4.0, 100.0, size=(20, 20, 6)).astype(np.float32)
    volume[0, 0, 0] = -50.0  # a negative value counts as 0
    mask = np.zeros(volume.shape, dtype=bool)
    mask[2:18, 3:17, 1:5] = True
    return volume, mask


def test_lesion_window_ranges_by_hand():
    volume, mask = _volume()
    window = IntensityWindow()
    assert window.name == "lesion"
    assert window.intensity_range("adc", volume, mask) == (0.0, 2500.0)
    lo, hi = window.intensity_range("dwi", volume, mask)
    assert lo == 0.0 and hi == pytest.approx(3.0 * np.median(np.maximum(volume[mask], 0)))
    wider = IntensityWindow.from_config({"name": "lesion", "adc_range": [100, 3000], "dwi_headroom": 2.5})
    assert wider.intensity_range("adc", volume, mask) == (100.0, 3000.0)
    assert wider.intensity_range("dwi", volume, mask)[1] == pytest.approx(2.5 * brain_median(volume, mask))


def test_reference_percentile_window_is_the_reference_codes():
    volume, mask = _volume(1)
    window = IntensityWindow.from_config("reference_percentile")
    expected = np.percentile(np.maximum(volume[mask], 0), [0.5, 99.5])
    for modality in ("dwi", "adc"):
        assert window.intensity_range(modality, volume, mask) == pytest.approx(tuple(expected))


def test_a_small_bright_lesion_is_clipped_by_the_percentile_window_and_kept_by_the_lesion_window():
    volume = np.full((40, 40, 4), 100.0, dtype=np.float32)
    mask = np.ones(volume.shape, dtype=bool)
    volume[:2, :2, 0] = 160.0  # a lesion of 4 voxels in 6400 (0.06% of the brain), 1.6 x normal
    _, hi = IntensityWindow(name="reference_percentile").intensity_range("dwi", volume, mask)
    assert hi < 160.0
    assert IntensityWindow().intensity_range("dwi", volume, mask)[1] >= 160.0


@pytest.mark.parametrize("config, match", [
    ("percentile", "window 'percentile' does not exist"),
    ({"name": "lesion", "adc_range": [700, 2500]}, "cannot hold the core threshold 620"),
    ({"name": "lesion", "adc_range": [0, 1000]}, "cannot hold the core threshold 620"),
    ({"name": "lesion", "adc_range": [2500, 0]}, "is not a range of ADC values"),
    ({"name": "lesion", "adc_range": [0]}, "two numbers"),
    ({"name": "lesion", "dwi_headroom": 1.5}, "dwi_headroom 1.5 leaves no room"),
    ({"name": "lesion", "dwi_headroom": "x"}, "must be a number"),
    ({"name": "lesion", "adc_lo": 0}, "window key 'adc_lo' does not exist"),
    ({"name": "reference_percentile", "dwi_headroom": 3}, "window key 'dwi_headroom' does not exist"),
    (3, "must be a name"),
])
def test_windows_that_cannot_keep_the_lesion_are_refused_by_key(config, match):
    with pytest.raises(WindowError, match=match):
        IntensityWindow.from_config(config)


def test_json_round_trip_and_windows_recorded_before_windows_existed():
    for window in (IntensityWindow(), IntensityWindow(name="reference_percentile"),
                   IntensityWindow(adc_range=(50.0, 2000.0), dwi_headroom=2.0)):
        assert IntensityWindow.from_json(json.loads(json.dumps(window.to_json()))) == window
    assert IntensityWindow.from_json(None) == IntensityWindow(name="reference_percentile")
    assert IntensityWindow().cli() == "--window lesion --adc_window 0 2500 --dwi_headroom 3"


def _cohort(root, n=2):
    for i in range(n):
        write_patient(generate_patient([3, i], size=(32, 32), n_slices=4, lesion_volume_ml=20.0 * i), root / f"P{i}")


def test_preprocessing_records_the_window_and_refuses_a_reference_made_with_another(tmp_path, capsys):
    _cohort(tmp_path / "raw")
    preprocess_cohort(tmp_path / "raw", tmp_path / "train", size=(32, 32), progress=False)
    index = json.loads((tmp_path / "train" / "index.json").read_text())
    assert index["window"] == IntensityWindow().to_json()
    assert load_reference(tmp_path / "train").window == IntensityWindow()
    records = load_index(tmp_path / "train")
    assert all(r.adc_range == (0.0, 2500.0) and r.intensity_window == IntensityWindow() for r in records.values())
    with pytest.raises(ValueError, match="--reference .* was preprocessed with the window lesion"):
        preprocess_cohort(tmp_path / "raw", tmp_path / "test", size=(32, 32), progress=False,
                          reference_dir=tmp_path / "train", window="reference_percentile")
    assert not (tmp_path / "test").exists()  # refused before anything is written
    rc = preprocess_main(["--input_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "o"),
                          "--size", "32", "32", "--spacing", "native", "--adc_window", "700", "2500"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "cannot hold the core threshold" in err[0] and not (tmp_path / "o").exists()
