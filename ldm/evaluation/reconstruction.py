"""Reconstruction quality of a first stage (``AutoencoderKL``, ``VQModel``): PSNR, SSIM, LPIPS, rFID, latent statistics.

Every image metric compares the input ``x`` with its reconstruction ``x̂`` as 8-bit images (what a saved PNG holds):
both are mapped from [-1, 1] to [0, 255] by ``round(127.5 · (x + 1))`` after clamping, then

- PSNR per image, on the [0, 255] scale: ``10 · log10(255² / mean((x − x̂)²))`` (dB);
- SSIM per image: torchmetrics' ``structural_similarity_index_measure`` with the standard Gaussian window
  (11x11, σ = 1.5), ``data_range = 255``, ``k1 = 0.01``, ``k2 = 0.03``: the SSIM map of Wang et al. 2004 at every
  pixel, the image reflected at its borders, averaged over all pixels and channels (torchmetrics' convention;
  Wang's MATLAB code and scikit-image average only the windows inside the image, a small difference on large
  images);
- LPIPS per image: the VGG variant (the ``lpips`` package's lin weights, torchvision's ImageNet VGG16) through
  :class:`ldm.modules.losses.lpips.LPIPS`, on the 8-bit images mapped back to [-1, 1];
- rFID: the Fréchet distance between the features of all inputs and of all reconstructions
  (:mod:`ldm.evaluation.frechet`) under a feature extractor (Inception for the paper's figures);

and the latents ``z`` (the posterior sample, as ``LatentDiffusion(scale_by_std=True)`` draws them; the pre-quantiser
``h`` of a VQ model, as ``VQModelInterface.encode`` gives them) give ``mean(z)``, ``std(z)`` (unbiased, over every
element of every image) and the ``scale_factor = 1 / std(z)`` a latent-diffusion config should use.
Reconstructions decode the posterior mode (``sample_posterior=False``) unless asked to decode the sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torchmetrics.functional.image import structural_similarity_index_measure
from tqdm import tqdm

from ldm.evaluation.features import POOL
from ldm.evaluation.frechet import feature_statistics, frechet_distance
from ldm.models.autoencoder import AutoencoderKL, VQModel

#: ``extractor(uint8 images (B, 3, H, W)) -> {"pool": (B, D), ...}``
#: (:class:`ldm.evaluation.features.FeatureExtractor`).
FeatureExtractor = Callable[[torch.Tensor], dict]

#: The SSIM window of Wang et al. 2004 (and of the paper's Table 8 figures).
SSIM_KERNEL_SIZE, SSIM_SIGMA = 11, 1.5


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` in [-1, 1] -> float64 values in {0, 1, …, 255}: ``round(127.5 · (clamp(x) + 1))``."""
    return torch.round((x.double().clamp(-1.0, 1.0) + 1.0) * 127.5)


def from_8bit(x8: torch.Tensor) -> torch.Tensor:
    """8-bit values ``(B, C, H, W)`` -> float32 in [-1, 1]: ``x / 127.5 − 1``."""
    return x8.float() / 127.5 - 1.0


def psnr_8bit(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) ``(B,)`` of ``x_hat`` against ``x`` (both ``(B, C, H, W)`` in [-1, 1]) as 8-bit images:
    ``10 · log10(255² / MSE)``; identical images give ``inf``."""
    if x.shape != x_hat.shape:
        raise ValueError(f"psnr needs equal shapes, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    mse = (to_8bit(x) - to_8bit(x_hat)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)


def ssim_8bit(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM ``(B,)`` of the 8-bit images (Gaussian 11x11 window, σ = 1.5, data range 255).

    Images need sides of at least 11 pixels (the window)."""
    if min(x.shape[-2:]) < SSIM_KERNEL_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_KERNEL_SIZE}x{SSIM_KERNEL_SIZE} px (its window), "
                         f"got {tuple(x.shape[-2:])}")
    return structural_similarity_index_measure(
        to_8bit(x_hat), to_8bit(x), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL_SIZE,
        data_range=255.0, reduction="none",
    )


class RunningMoments:
    """Mean and unbiased std of every element seen, accumulated in float64 (any number of batches)."""

    def __init__(self) -> None:
        self.count, self.total, self.total_sq = 0, 0.0, 0.0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double()
        self.count += values.numel()
        self.total += float(values.sum())
        self.total_sq += float(values.pow(2).sum())

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def std(self) -> float:
        """``sqrt((Σ z² − n · mean²) / (n − 1))``, as ``torch.std`` (Bessel-corrected)."""
        variance = (self.total_sq - self.count * self.mean**2) / (self.count - 1)
        return math.sqrt(max(variance, 0.0))


def encode_decode(model: torch.nn.Module, x: torch.Tensor, sample_posterior: bool = False,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂, z)`` for ``x (B, 3, H, W)``: ``z`` the latent LatentDiffusion would use (a posterior sample; a VQ model's
    pre-quantiser output), ``x̂`` the decoded posterior mode (or the sample), or the decoded quantised latent."""
    if isinstance(model, AutoencoderKL):
        posterior = model.encode(x)
        z = posterior.sample(generator)
        return model.decode(z if sample_posterior else posterior.mode()), z
    if isinstance(model, VQModel):
        h = model.encode_to_prequant(x)
        quant = model.quantize(h)[0]
        return model.decoder(model.post_quant_conv(quant)), h
    raise TypeError(f"{type(model).__name__} is not an AutoencoderKL or VQModel: the reconstruction metrics need "
                    "a first-stage autoencoder config (model.target ldm.models.autoencoder.AutoencoderKL / VQModel)")


@dataclass
class ReconstructionReport:
    """Means and stds over images (PSNR dB on [0, 255], SSIM, LPIPS), rFID, and the latent statistics."""

    images: int
    psnr: float
    psnr_std: float
    ssim: float
    ssim_std: float
    lpips: float | None
    lpips_std: float | None
    rfid: float | None
    latent_mean: float
    latent_std: float
    scale_factor: float
    latent_shape: tuple[int, ...]

    def as_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """A one-row markdown table of the figures."""
        def show(value: float | None, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        header = "| images | PSNR (dB) | SSIM | LPIPS | rFID | latent mean | latent std | scale_factor |"
        row = (f"| {self.images} | {self.psnr:.2f} ± {self.psnr_std:.2f} | {self.ssim:.3f} ± {self.ssim_std:.3f} | "
               f"{show(self.lpips, 3)} | {show(self.rfid, 2)} | {self.latent_mean:.4f} | {self.latent_std:.4f} | "
               f"{self.scale_factor:.5f} |")
        return "\n".join([header, "|" + " --- |" * 8, row])


def _device_of(module: object, fallback: torch.device) -> torch.device:
    """The device of ``module``'s first parameter (``fallback`` for a parameterless callable)."""
    parameters = getattr(module, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.device if first is not None else fallback


def _mean_std(values: list[torch.Tensor]) -> tuple[float, float]:
    joined = torch.cat(values).double()
    finite = joined[torch.isfinite(joined)]  # identical images have infinite PSNR: left out of the mean
    if len(finite) == 0:
        return math.inf, 0.0
    return float(finite.mean()), float(finite.std()) if len(finite) > 1 else 0.0


@torch.no_grad()
def evaluate_autoencoder(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    lpips: torch.nn.Module | None = None,
    feature_extractor: FeatureExtractor | None = None,
    sample_posterior: bool = False,
    seed: int = 0,
    total: int | None = None,
) -> ReconstructionReport:
    """Reconstruct every batch ``(B, 3, H, W)`` in [-1, 1] and measure (see the module docstring).

    ``lpips``: an LPIPS module (``None`` skips LPIPS); ``feature_extractor``: a
    :class:`ldm.evaluation.features.FeatureExtractor` (uint8 images in, ``{"pool": (B, D)}`` out) for rFID
    (``None`` skips rFID; it needs at least 2 images). Posterior samples draw from a generator
    seeded with ``seed``. ``total``: the number of batches, for the progress bar.
    """
    device = next(model.parameters()).device
    extractor_device = _device_of(feature_extractor, device)
    generator = torch.Generator().manual_seed(seed)
    psnrs, ssims, lpipses, real_features, fake_features = [], [], [], [], []
    moments, latent_shape = RunningMoments(), ()
    for x in tqdm(batches, total=total, desc="reconstructing", unit="batch"):
        x = x.to(device).float()
        x_hat, z = encode_decode(model, x, sample_posterior, generator)
        moments.update(z)
        latent_shape = tuple(z.shape[1:])
        x_hat = x_hat.float().cpu()
        x = x.cpu()
        psnrs.append(psnr_8bit(x, x_hat))
        ssims.append(ssim_8bit(x, x_hat))
        x8, x8_hat = to_8bit(x).to(torch.uint8), to_8bit(x_hat).to(torch.uint8)
        if lpips is not None:
            lpips_device = next(lpips.parameters()).device
            lpipses.append(lpips(from_8bit(x8).to(lpips_device), from_8bit(x8_hat).to(lpips_device)).flatten().cpu())
        if feature_extractor is not None:
            real_features.append(feature_extractor(x8.to(extractor_device))[POOL].double().cpu())
            fake_features.append(feature_extractor(x8_hat.to(extractor_device))[POOL].double().cpu())
    if moments.count == 0:
        raise ValueError("evaluate_autoencoder got no images; check the dataset or folder")
    rfid = None
    if feature_extractor is not None:
        rfid = frechet_distance(*feature_statistics(torch.cat(real_features)),
                                *feature_statistics(torch.cat(fake_features)))
    lpips_mean, lpips_std = _mean_std(lpipses) if lpipses else (None, None)
    return ReconstructionReport(
        images=sum(len(p) for p in psnrs),
        psnr=_mean_std(psnrs)[0], psnr_std=_mean_std(psnrs)[1],
        ssim=_mean_std(ssims)[0], ssim_std=_mean_std(ssims)[1],
        lpips=lpips_mean, lpips_std=lpips_std, rfid=rfid,
        latent_mean=moments.mean, latent_std=moments.std, scale_factor=1.0 / moments.std,
        latent_shape=latent_shape,
    )
