"""DPM-Solver++ for the discrete-time latent diffusion models; ``DPMSolverSampler`` as Stable Diffusion imports it."""

from ldm.models.diffusion.dpm_solver.sampler import DPMSolverSampler

__all__ = ["DPMSolverSampler"]
