"""Reference statistics as ``.npz`` in the layout of the ADM / guided-diffusion evaluator
(``evaluations/evaluator.py``), so its published reference batches load directly and our files load there.

Keys of that layout:

- ``arr_0``: images ``(N, H, W, 3)`` uint8 (a reference or sample batch; ``arr_1``: class labels, when sampled
  class-conditionally);
- ``mu`` ``(2048,)``, ``sigma`` ``(2048, 2048)``: mean and covariance of the Inception pool_3 features (FID);
- ``mu_s``, ``sigma_s``: the same of the spatial features ``mixed_6/conv`` (sFID; read and kept, not computed here:
  torch-fidelity's Inception port has no such layer).

The ADM evaluator stores no activations: it recomputes them from ``arr_0``. Our files add, under their own keys,
``pool_features`` ``(N, D)`` (KID and precision/recall need the samples, not only the moments), ``logits``
``(N, K)`` (Inception Score) and ``feature_extractor`` (the name of the extractor that made them, so that
statistics of different networks are never compared). A file with ``mu``/``sigma`` but no ``feature_extractor``
(ADM's) is taken to hold Inception-v3 pool_3 statistics. Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ldm.evaluation.features import INCEPTION
from ldm.evaluation.frechet import feature_statistics

logger = logging.getLogger(__name__)

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"
MU_KEY, SIGMA_KEY = "mu", "sigma"
SPATIAL_MU_KEY, SPATIAL_SIGMA_KEY = "mu_s", "sigma_s"
POOL_FEATURES_KEY = "pool_features"
LOGITS_KEY = "logits"
EXTRACTOR_KEY = "feature_extractor"


@dataclass
class ReferenceStats:
    """FID moments of a reference set (``mu`` ``(D,)``, ``sigma`` ``(D, D)``, float64), the features they came from
    where known (``pool_features`` ``(N, D)``, ``logits`` ``(N, K)``), the extractor's name, and ADM's spatial
    moments when the file had them."""

    mu: np.ndarray
    sigma: np.ndarray
    feature_extractor: str = INCEPTION
    pool_features: np.ndarray | None = None
    logits: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None

    @classmethod
    def from_features(cls, pool_features: np.ndarray, feature_extractor: str,
                      logits: np.ndarray | None = None) -> ReferenceStats:
        """Moments of ``pool_features`` ``(N, D)``, keeping the features (and ``logits``) for KID / PR / IS."""
        mu, sigma = feature_statistics(pool_features)
        return cls(mu, sigma, feature_extractor, np.asarray(pool_features), None if logits is None else
                   np.asarray(logits))

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` (``mu``, ``sigma``, ``feature_extractor``, and ``pool_features`` / ``logits`` /
        ``mu_s`` / ``sigma_s`` where present)."""
        arrays = {MU_KEY: self.mu, SIGMA_KEY: self.sigma, EXTRACTOR_KEY: np.array(self.feature_extractor)}
        optional = {POOL_FEATURES_KEY: self.pool_features, LOGITS_KEY: self.logits,
                    SPATIAL_MU_KEY: self.mu_s, SPATIAL_SIGMA_KEY: self.sigma_s}
        arrays.update({key: value for key, value in optional.items() if value is not None})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as file:  # an open file keeps np.savez from appending ".npz" to the name
            np.savez(file, **arrays)
        return path

    def check_extractor(self, name: str, source: str | Path) -> None:
        """``ValueError`` unless these statistics were made by the extractor ``name``."""
        if self.feature_extractor != name:
            raise ValueError(f"reference statistics {source} were computed with {self.feature_extractor!r}, not "
                             f"{name!r}; recompute them with the same feature extractor")


def npz_keys(path: str | Path) -> list[str]:
    """The array names in an ``.npz`` file (without reading the arrays)."""
    with np.load(path, allow_pickle=False) as archive:
        return list(archive.files)


def has_statistics(path: str | Path) -> bool:
    """Whether the ``.npz`` holds precomputed ``mu`` and ``sigma``."""
    keys = npz_keys(path)
    return MU_KEY in keys and SIGMA_KEY in keys


def has_images(path: str | Path) -> bool:
    """Whether the ``.npz`` holds an image batch ``arr_0``."""
    return IMAGES_KEY in npz_keys(path)


def load_reference_stats(path: str | Path) -> ReferenceStats:
    """The statistics stored in an ``.npz`` of this layout; ``ValueError`` naming the file when it has none."""
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if not {MU_KEY, SIGMA_KEY} <= keys:
            raise ValueError(f"{path} holds no precomputed statistics (keys: {sorted(keys)}); it needs 'mu' and "
                             "'sigma', or images under 'arr_0' to compute them from")

        def get(key: str) -> np.ndarray | None:
            return archive[key] if key in keys else None

        name = str(archive[EXTRACTOR_KEY]) if EXTRACTOR_KEY in keys else INCEPTION
        return ReferenceStats(
            mu=archive[MU_KEY].astype(np.float64), sigma=archive[SIGMA_KEY].astype(np.float64), feature_extractor=name,
            pool_features=get(POOL_FEATURES_KEY), logits=get(LOGITS_KEY),
            mu_s=get(SPATIAL_MU_KEY), sigma_s=get(SPATIAL_SIGMA_KEY),
        )


def save_image_batch(path: str | Path, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """An ADM sample/reference batch: ``arr_0`` = images ``(N, H, W, 3)`` uint8 (and ``arr_1`` = labels ``(N,)``),
    stored uncompressed so :func:`npz_images` can map it."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"an image batch must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    arrays = {IMAGES_KEY: images} if labels is None else {IMAGES_KEY: images, LABELS_KEY: np.asarray(labels)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        np.savez(file, **arrays)
    return path


def npz_images(path: str | Path, key: str = IMAGES_KEY) -> np.ndarray:
    """The image batch ``key`` of an ``.npz`` as ``(N, H, W, 3)`` uint8, memory-mapped when the member is stored
    uncompressed (``np.savez``, as ADM's batches are: 50k images at 256 px never sit in memory at once), else read
    whole (``np.savez_compressed``)."""
    path = Path(path)
    member = f"{key}.npy"
    with zipfile.ZipFile(path) as archive:
        if member not in archive.namelist():
            raise ValueError(f"{path} has no image batch {key!r} (members: {archive.namelist()})")
        info = archive.getinfo(member)
        stored = info.compress_type == zipfile.ZIP_STORED
        if stored:
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(stream)
                header_length = stream.tell()
    if not stored:
        logger.info("%s is compressed: reading all of %s into memory", path, key)
        with np.load(path, allow_pickle=False) as archive:
            images = archive[key]
    else:
        with open(path, "rb") as file:  # local file header: 30 bytes, then the name and the extra field
            file.seek(info.header_offset + 26)
            name_length, extra_length = np.frombuffer(file.read(4), dtype="<u2")
        offset = info.header_offset + 30 + int(name_length) + int(extra_length) + header_length
        images = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                           order="F" if fortran_order else "C")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: {key} must be uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return images
