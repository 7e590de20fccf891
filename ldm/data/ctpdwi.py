"""Alias of :mod:`ldm.data.training.datasets` under the name that configs of saved runs give."""
from ldm.data.training.datasets import CTPMRISlices, MRISlices

__all__ = ["CTPMRISlices", "MRISlices"]
