"""Lightning callbacks and checkpoint IO used by ``main.py`` (configs may name them as ``main.<Name>``)."""

from ldm.callbacks.checkpointing import AtomicCheckpointIO, SignalCheckpoint, atomic_torch_save, to_safe_types
from ldm.callbacks.cuda import CUDACallback
from ldm.callbacks.image_logger import ImageLogger, make_grid
from ldm.callbacks.setup import SetupCallback

__all__ = [
    "AtomicCheckpointIO",
    "CUDACallback",
    "ImageLogger",
    "SetupCallback",
    "SignalCheckpoint",
    "atomic_torch_save",
    "make_grid",
    "to_safe_types",
]
