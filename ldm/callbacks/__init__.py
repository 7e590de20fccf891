"""Lightning callbacks that main.py attaches to every run."""
from ldm.callbacks.emergency_checkpoint import EmergencyCheckpoint
from ldm.callbacks.image_logger import ImageLogger
from ldm.callbacks.setup import SetupCallback

__all__ = ["EmergencyCheckpoint", "ImageLogger", "SetupCallback"]
