"""UniPC (Zhao et al. 2023) for the discrete-time latent diffusion models: ``UniPCSampler`` with the DDIM
sampler's ``sample`` call, and ``sample_unipc`` with k-diffusion's sampler signature."""

from ldm.models.diffusion.uni_pc.k_style import sample_unipc
from ldm.models.diffusion.uni_pc.sampler import UniPCSampler

__all__ = ["UniPCSampler", "sample_unipc"]
