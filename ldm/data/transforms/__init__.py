"""Array operations on one patient's maps, with no project types: voxel grids and resampling
(resampling.py), CTP time points (timepoints.py), the intensity window and the linear maps to [0, 1]
and [-1, 1] (intensity_window.py, normalization.py), the brain mask (brain_mask.py), in-plane
cropping (cropping.py) and the slice rules (slice_selection.py). Imports nothing else of ldm.data.
"""
