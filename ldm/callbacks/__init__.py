"""Lightning callbacks and checkpoint IO used by ``main.py`` (configs may name them as ``main.<Name>``)."""

from ldm.callbacks.checkpointing import (
    AtomicCheckpointIO,
    CheckpointWriteError,
    SignalCheckpoint,
    atomic_file,
    atomic_torch_save,
    remove_stale_temp_files,
    to_safe_types,
)
from ldm.callbacks.cuda import CUDACallback
from ldm.callbacks.fast_training import FastTrainingConvs
from ldm.callbacks.image_logger import ImageLogger, make_grid
from ldm.callbacks.rng_state import RNGStateCallback, rng_restore, rng_snapshot
from ldm.callbacks.setup import SetupCallback

__all__ = [
    "AtomicCheckpointIO",
    "CUDACallback",
    "CheckpointWriteError",
    "FastTrainingConvs",
    "ImageLogger",
    "RNGStateCallback",
    "SetupCallback",
    "SignalCheckpoint",
    "atomic_file",
    "atomic_torch_save",
    "make_grid",
    "remove_stale_temp_files",
    "rng_restore",
    "rng_snapshot",
    "to_safe_types",
]
