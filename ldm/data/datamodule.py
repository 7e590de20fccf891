"""Alias of :mod:`ldm.data.training.datamodule` under the name that configs of saved runs give."""
from ldm.data.training.datamodule import DataModuleFromConfig

__all__ = ["DataModuleFromConfig"]
