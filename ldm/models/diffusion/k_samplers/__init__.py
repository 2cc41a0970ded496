"""The k-diffusion sampler family (Karras et al. 2022; Crowson's ``k_diffusion.sampling``) on ldm models.

Samplers work on the variance-exploding view of a discrete model: z = x_t / α_t = x_0 + σ ε with the noise level
σ = √((1 − ᾱ)/ᾱ), from ``z_T = σ_max · N(0, I)`` down a decreasing list of noise levels ending in 0. A model is
seen through a denoiser ``D(z, σ) ≈ E[x_0 | z]`` (:mod:`.denoisers`); the noise-level lists come from
:mod:`.schedules`; every sampler is a function ``sample_<name>(model, x, sigmas, extra_args=None, callback=None,
disable=None, ...)`` with k-diffusion's names and keyword arguments.
"""

from ldm.models.diffusion.k_samplers.ancestral import *  # noqa: F403
from ldm.models.diffusion.k_samplers.common import *  # noqa: F403
from ldm.models.diffusion.k_samplers.denoisers import *  # noqa: F403
from ldm.models.diffusion.k_samplers.dpm_adaptive import *  # noqa: F403
from ldm.models.diffusion.k_samplers.noise import *  # noqa: F403
from ldm.models.diffusion.k_samplers.ode import *  # noqa: F403
from ldm.models.diffusion.k_samplers.schedules import *  # noqa: F403
from ldm.models.diffusion.k_samplers.sde import *  # noqa: F403
