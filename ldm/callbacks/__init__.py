"""Lightning callbacks that main.py attaches to every run."""
from ldm.callbacks.emergency_checkpoint import EmergencyCheckpoint
from ldm.callbacks.image_logger import ImageLogger
from ldm.callbacks.nonfinite_guard import NonFiniteLossError, NonFiniteLossGuard
from ldm.callbacks.setup import SetupCallback

__all__ = ["EmergencyCheckpoint", "ImageLogger", "NonFiniteLossError", "NonFiniteLossGuard", "SetupCallback"]
