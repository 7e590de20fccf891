"""Data: from scans on disk to the slices a model trains on, by concern. An arrow may only point up
this list (tests/test_architecture.py keeps it so):

- ``transforms/``: array operations on one patient, no project types: resampling and grids (spatial),
  CTP time points (temporal), intensity windows and normalisation, brain masks, cropping, slice rules.
- ``record.py``: a preprocessed patient's record and the cohort reference, the contract every
  concern below reads and writes (docs/data.md).
- ``ingest/``: real scans come in: the one patient loader, plausibility of the maps, grid and frame
  harmonisation, CTP-to-MRI registration and its QC, the ISLES'24 importer, the cohort report.
- ``preprocessing/``: the pipeline that writes a split (``python -m ldm.data.preprocessing``), the
  run-to-split data contract, and the way back from slices to a volume in source geometry.
- ``training/``: the slice datasets, their augmentation and store, the Lightning data module.
- ``synthetic/``: the simulator of a CTP/DWI/ADC cohort (``python -m ldm.data.synthetic``), used by the
  demo and the tests; nothing else imports it.

``ldm.data.ctpdwi`` and ``ldm.data.datamodule`` are kept as aliases: configs of saved runs name them.
"""
