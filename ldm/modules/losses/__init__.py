"""Autoencoder losses: ``LPIPSWithDiscriminator`` (KL), ``VQLPIPSWithDiscriminator`` (VQ), ``DummyLoss`` (none)."""

from ldm.modules.losses.contperceptual import DummyLoss, LPIPSWithDiscriminator
from ldm.modules.losses.vqperceptual import VQLPIPSWithDiscriminator

__all__ = ["DummyLoss", "LPIPSWithDiscriminator", "VQLPIPSWithDiscriminator"]
