"""Brain extraction from the CTP alone (item: a CT brain mask when none is given), against the
synthetic cohort's known brain mask: skull-stripped as the paper's CTP, and with a skull, scalp and
air around it as clinical (and ISLES'24) CTP."""
import numpy as np
import pytest

from ldm.data.transforms.brain_mask import derive_brain_mask, is_skull_stripped
from ldm.data.synthetic.skull import add_skull
from ldm.data.synthetic.cohort import SIZES, generate_patient


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def cohort():
    """Three patients at the paper's 1 x 1 x 5 mm and 192 x 224 (8 central slices, to stay fast)
    and one at the demo's 3.5 x 3.5 x 5 mm."""
    patients = [generate_patient([11, i], size=SIZES["paper"], n_slices=8, n_timepoints=15) for i in range(3)]
    return patients + [generate_patient([11, 9], size=SIZES["demo"], n_timepoints=15)]


def test_brain_mask_from_the_ctp_matches_the_known_mask(cohort):
    rng = np.random.default_rng(0)
    for p in cohort:
        truth = p.mask > 0
        voxel = p.info["voxel_mm"]
        stripped = derive_brain_mask(p.ctp, zooms=voxel)
        assert is_skull_stripped(p.ctp.mean(axis=-1))
        assert _dice(stripped, truth) >= 0.9, _dice(stripped, truth)
        head = add_skull(p.ctp, truth, voxel, rng)
        assert not is_skull_stripped(head.mean(axis=-1))
        assert head.min() < -900 and head.max() > 1000  # air and bone: a real head CT's range
        unstripped = derive_brain_mask(head, zooms=voxel)
        assert _dice(unstripped, truth) >= 0.9, _dice(unstripped, truth)
        bone = head.mean(axis=-1) > 500  # the skull is left out (a few voxels may close over a gap)
        assert np.count_nonzero(unstripped & bone) < 1e-2 * np.count_nonzero(unstripped)
