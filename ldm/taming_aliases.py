"""``taming.*`` config targets mapped onto this package when taming-transformers is not installed.

The released LDM configs (the VQ first stages of ``models/first_stage_models`` among them) name classes of the
taming-transformers package, from which latent-diffusion took its autoencoder parts. This package carries
equivalents of those parts; :data:`TAMING_ALIASES` is the one table that says which. When ``taming`` is
importable its own classes are used and the table is not consulted.
"""

from __future__ import annotations

import importlib.util
import logging

logger = logging.getLogger(__name__)

#: taming-transformers import path -> the equivalent import path in this package.
TAMING_ALIASES: dict[str, str] = {
    "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator":
        "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
    "taming.modules.losses.vqperceptual.DummyLoss": "ldm.modules.losses.contperceptual.DummyLoss",
    "taming.modules.losses.vqperceptual.adopt_weight": "ldm.modules.losses.discriminator.adopt_weight",
    "taming.modules.losses.vqperceptual.hinge_d_loss": "ldm.modules.losses.discriminator.hinge_d_loss",
    "taming.modules.losses.vqperceptual.vanilla_d_loss": "ldm.modules.losses.discriminator.vanilla_d_loss",
    "taming.modules.losses.lpips.LPIPS": "ldm.modules.losses.lpips.LPIPS",
    "taming.modules.discriminator.model.NLayerDiscriminator": "ldm.modules.losses.discriminator.NLayerDiscriminator",
    "taming.modules.discriminator.model.weights_init": "ldm.modules.losses.discriminator.weights_init",
    "taming.modules.util.ActNorm": "ldm.modules.losses.discriminator.ActNorm",
    "taming.modules.vqvae.quantize.VectorQuantizer2": "ldm.modules.vqvae.quantize.VectorQuantizer2",
    "taming.models.vqgan.VQModel": "ldm.models.autoencoder.VQModel",
    "taming.data.faceshq.FacesBase": "ldm.data.faceshq.FacesBase",
    "taming.data.faceshq.CelebAHQTrain": "ldm.data.faceshq.CelebAHQTrain",
    "taming.data.faceshq.CelebAHQValidation": "ldm.data.faceshq.CelebAHQValidation",
    "taming.data.faceshq.FFHQTrain": "ldm.data.faceshq.FFHQTrain",
    "taming.data.faceshq.FFHQValidation": "ldm.data.faceshq.FFHQValidation",
    "taming.data.faceshq.FacesHQTrain": "ldm.data.faceshq.FacesHQTrain",
    "taming.data.faceshq.FacesHQValidation": "ldm.data.faceshq.FacesHQValidation",
    "taming.data.base.ImagePaths": "ldm.data.image_paths.ImagePaths",
    "taming.data.base.NumpyPaths": "ldm.data.image_paths.NumpyPaths",
    "taming.data.base.ConcatDatasetWithIndex": "ldm.data.image_paths.ConcatDatasetWithIndex",
}

_announced: set[str] = set()


class NoTamingEquivalentError(ModuleNotFoundError):
    """A ``taming.*`` target has no counterpart here and taming-transformers is not installed."""


def taming_installed() -> bool:
    """True when the ``taming`` package (taming-transformers) can be imported."""
    return importlib.util.find_spec("taming") is not None


def resolve_target(target: str) -> str:
    """The import path to use for a config ``target``.

    Paths outside ``taming.`` come back unchanged, as do all paths when taming-transformers is installed.
    Otherwise the alias from :data:`TAMING_ALIASES` is returned (logged at INFO the first time each alias is
    used); a ``taming.`` path without an alias raises :class:`NoTamingEquivalentError` naming it and the fix.
    """
    if not target.startswith("taming.") or taming_installed():
        return target
    alias = TAMING_ALIASES.get(target)
    if alias is None:
        raise NoTamingEquivalentError(
            f"target {target!r} belongs to taming-transformers, which is not installed, and this package has no "
            f"equivalent of it (aliased taming targets: {sorted(TAMING_ALIASES)}). "
            "Install it with 'pip install taming-transformers' or point 'target' at an ldm class."
        )
    if target not in _announced:
        _announced.add(target)
        logger.info("taming-transformers is not installed: config target %r resolved to %r.", target, alias)
    return alias
