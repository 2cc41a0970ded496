"""Installable package ``ldm``: latent diffusion models (autoencoders, UNet, DDPM/LDM, samplers)."""

from setuptools import find_packages, setup

setup(
    name="latent-diffusion",
    version="0.1.0",
    description="A faithful, fast, tested PyTorch implementation of latent diffusion (Rombach et al. 2021).",
    packages=find_packages(include=["ldm", "ldm.*"]),
    include_package_data=True,
    package_data={"ldm": ["**/*.gz", "**/*.json", "**/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "pytorch-lightning>=2.1",
        "omegaconf>=2.3",
        "einops>=0.6",
        "transformers>=4.30",
        "lpips>=0.1.4",
        "safetensors>=0.4",
        "pillow",
        "numpy",
        "tqdm",
        "scipy",
        "torchsde>=0.2.5",
        "open_clip_torch>=2.20",
        "webdataset>=0.2.86",
        "peft>=0.10",
        "torchmetrics>=1.0",
        "torch-fidelity>=0.3",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff>=0.4", "scikit-learn", "tensorboard"],
        "bench": ["diffusers"],
        "diffusers": ["diffusers"],
    },
)
