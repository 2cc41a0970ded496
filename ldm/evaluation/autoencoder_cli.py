"""The ``autoencoder`` evaluation: reconstruction PSNR / SSIM / LPIPS / rFID and latent statistics of a first stage.
``python scripts/evaluate.py autoencoder ...`` runs it (the same as ``python -m ldm.evaluation.autoencoder_cli``).

    python -m ldm.evaluation.autoencoder_cli --config configs/autoencoder/autoencoder_kl_32x32x4.yaml \
        --ckpt models/first_stage_models/kl-f8/model.ckpt \
        --data-config configs/autoencoder/autoencoder_kl_32x32x4.yaml --num-images 50000 \
        --features inception --out kl-f8.json
    python -m ldm.evaluation.autoencoder_cli --config CONFIG --ckpt CKPT --images my_photos/ --size 256

The images come from a dataset config (a training config's ``data.params.<--split>``, or a bare ``target`` /
``params`` dataset config) or from an image folder (centre-cropped and resized to ``--size``). Figures: see
:mod:`ldm.evaluation.reconstruction`. The result is printed as a table and, with ``--out``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset

from ldm.cli.validation import OneLineParser, int_in, require_dir, require_file
from ldm.evaluation.reconstruction import FeatureExtractor, ReconstructionReport, evaluate_autoencoder
from ldm.inference import choose_device, load_config, load_model_from_config
from ldm.util import ConfigError, instantiate_from_config

logger = logging.getLogger(__name__)

FEATURES_HELP = ("feature space of rFID: 'inception' (torch-fidelity's Inception-v3 pool3, the standard), 'shapes' "
                 "(ldm.evaluation.shapes_features, for the bundled shapes data only; NOT Inception FID), "
                 "'package.module:factory' (a zero-argument callable returning a "
                 "ldm.evaluation.features.FeatureExtractor), or 'none'")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="evaluate.py autoencoder", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the autoencoder's config (model.target AutoencoderKL/VQModel)")
    parser.add_argument("--ckpt", default=None, help="its checkpoint (.ckpt or .safetensors); omit for the config's "
                        "own initialisation (e.g. model.params.ckpt_path)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-config", help="a config whose data.params.<--split> (or top-level target) is the "
                        "dataset; items have 'image' (H, W, 3) in [-1, 1]")
    source.add_argument("--images", help="a folder of images (searched recursively)")
    parser.add_argument("--split", default="validation", help="which data.params entry of --data-config to use")
    parser.add_argument("--size", type=int_in(11), default=None,
                        help="side that --images are centre-cropped and resized to (default: the config's "
                        "ddconfig.resolution)")
    parser.add_argument("--num-images", type=int_in(2), default=None, help="use the first N images (default: all)")
    parser.add_argument("--batch-size", type=int_in(1), default=16)
    parser.add_argument("--features", default="inception", help=FEATURES_HELP)
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (it needs torchvision's VGG16 weights)")
    parser.add_argument("--lpips-backbone", default="pretrained",
                        help="VGG16 weights of LPIPS: 'pretrained' (the torch hub cache) or a torchvision VGG16 "
                        "state-dict file")
    parser.add_argument("--sample-posterior", action="store_true",
                        help="decode a posterior sample instead of its mode (KL autoencoders)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--num-workers", type=int_in(0), default=0, help="data-loading worker processes")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    return parser


# ----------------------------------------------------------------------------------------------------------------
# inputs


def dataset_from_config(path: str, split: str) -> Dataset:
    """The dataset of ``path``'s ``data.params.<split>`` or, for a bare dataset config, its ``target``."""
    config = OmegaConf.load(require_file(path, "--data-config", "config file"))
    if "target" in config:
        return instantiate_from_config(config)
    entry = OmegaConf.select(config, f"data.params.{split}")
    if not isinstance(entry, DictConfig):
        raise ConfigError(f"config file {path} (from --data-config) has no data.params.{split}; pass --split with one "
                          "of its dataset entries or a dataset config with a top-level target")
    return instantiate_from_config(entry)


def image_batches(dataset: Dataset, batch_size: int, num_images: int | None, num_workers: int = 0
                  ) -> tuple[Iterator[torch.Tensor], int]:
    """Batches ``(B, 3, H, W)`` in [-1, 1] of the first ``num_images`` items' ``image``, and their number."""
    if num_images is not None:
        if num_images > len(dataset):
            raise ValueError(f"--num-images {num_images} is more than the {len(dataset)} images there are")
        dataset = Subset(dataset, range(num_images))

    def collate(items: list[dict[str, Any]]) -> torch.Tensor:
        images = np.stack([np.asarray(item["image"], dtype=np.float32) for item in items])
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    return iter(loader), len(loader)


def load_features(spec: str, device: torch.device) -> FeatureExtractor | None:
    """The ``--features`` extractor on ``device`` (:func:`ldm.evaluation.features.load_feature_extractor` for
    Inception and ``module:factory``), or None for ``none``."""
    if spec == "none":
        return None
    if spec == "shapes":
        from ldm.evaluation.shapes_features import ShapesFeatureExtractor

        return ShapesFeatureExtractor().to(device)
    from ldm.evaluation.features import INCEPTION, load_feature_extractor

    return load_feature_extractor(INCEPTION if spec == "inception" else spec).to(device)


def load_lpips(backbone: str, device: torch.device) -> torch.nn.Module:
    """LPIPS-VGG with the ``lpips`` package's lin weights and the VGG16 ``backbone`` (``"pretrained"``: torchvision's
    ImageNet file from the torch hub cache; or a file). Never random weights: a missing backbone raises
    :class:`ldm.modules.losses.lpips.PerceptualWeightsError` in one line saying which file to put where."""
    from ldm.modules.losses.lpips import LPIPS, VGG16_URL, PerceptualWeightsError

    try:
        return LPIPS(backbone=backbone).to(device)
    except PerceptualWeightsError:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name
        where = f"the file {backbone} (from --lpips-backbone)" if backbone != "pretrained" else "the torch hub cache"
        raise PerceptualWeightsError(
            f"LPIPS needs torchvision's ImageNet VGG16 weights, not found in {where}: download {VGG16_URL} to "
            f"{cached} (or pass --lpips-backbone /path/to/vgg16.pth), or skip LPIPS with --no-lpips") from None


# ----------------------------------------------------------------------------------------------------------------
# the command


def run(opt: argparse.Namespace) -> ReconstructionReport:
    """Load the model and the data named by ``opt`` and measure."""
    device = choose_device(opt.device)
    config = load_config(opt.config)
    if opt.ckpt is not None:
        require_file(opt.ckpt, "--ckpt", "checkpoint")
    lpips = None if opt.no_lpips else load_lpips(opt.lpips_backbone, device)  # fails fast, before the model
    extractor = load_features(opt.features, device)
    model, _ = load_model_from_config(config, opt.ckpt, device)
    if opt.data_config is not None:
        dataset = dataset_from_config(opt.data_config, opt.split)
    else:
        from ldm.data.image_folder import ImageFolderDataset

        size = opt.size or OmegaConf.select(config, "model.params.ddconfig.resolution")
        dataset = ImageFolderDataset(str(require_dir(opt.images, "--images")), size=size, flip_p=0.0)
    batches, total = image_batches(dataset, opt.batch_size, opt.num_images, opt.num_workers)
    return evaluate_autoencoder(model, batches, lpips=lpips, feature_extractor=extractor,
                                sample_posterior=opt.sample_posterior, seed=opt.seed, total=total)


def main(argv: list[str] | None = None) -> ReconstructionReport:
    """Parse ``argv``, evaluate, log the table and write ``--out``; returns the report."""
    opt = build_parser().parse_args(argv)
    report = run(opt)
    logger.info("%s", report.table())
    if opt.out is not None:
        Path(opt.out).parent.mkdir(parents=True, exist_ok=True)
        Path(opt.out).write_text(json.dumps({"features": opt.features, **report.as_dict()}, indent=2) + "\n")
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
