"""What a training run reads: the slice datasets (datasets.py: ``CTPMRISlices``, ``MRISlices``),
the reference augmentation (augmentation.py), the memory-mapped slice store (slice_store.py) and the
Lightning data module (datamodule.py). Reads record.py and transforms/ only.
"""
