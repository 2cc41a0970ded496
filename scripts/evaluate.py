"""Evaluate a generator: FID, KID, Inception Score, precision/recall (Inception-v3 pool3 features) and CLIP score,
between generated images and a reference; or save a reference's statistics.

    # images already generated (a folder, or an ADM sample batch .npz) against an ADM reference batch
    python scripts/evaluate.py --samples outputs/samples --reference VIRTUAL_imagenet256_labeled.npz \\
        --metrics fid,is,pr --json results.json
    # sample on the fly from a model (class-conditional ImageNet: 50 images per class)
    python scripts/evaluate.py --config configs/latent-diffusion/cin256-v2.yaml \\
        --ckpt models/ldm/cin256-v2/model.ckpt \\
        --sampler ddim --steps 250 --scale 1.5 --null-class 1000 --classes 0-999 --seeds 0-49999 \\
        --reference VIRTUAL_imagenet256_labeled.npz --metrics fid,is,pr
    # reference statistics of a training set (a folder, an .npz batch, or a data config and split)
    python scripts/evaluate.py --reference data/celebahq --save-stats celebahq_stats.npz
    # an autoencoder: reconstruction PSNR, SSIM, LPIPS, rFID and the latent statistics (docs/evaluation_autoencoder.md)
    python scripts/evaluate.py autoencoder --config CONFIG --ckpt CKPT --data-config CONFIG --num-images 50000

The reference: a folder of images, an ``.npz`` in the ADM evaluator's layout (``arr_0`` images and/or ``mu`` /
``sigma`` statistics; see ldm/evaluation/reference_stats.py) or a data config (``.yaml``; ``--reference-split``
picks ``data.params.<split>``). Results are printed as JSON and as a one-line table; ``--json`` writes them to a
file. ``--devices N --strategy ddp`` extracts the features of folders and ``.npz`` batches on N GPUs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from ldm.cli.validation import OneLineParser, float_in, int_in, require_file
from ldm.config_file import read_config
from ldm.evaluation import autoencoder_cli
from ldm.evaluation.clip_score import OpenClipScorer
from ldm.evaluation.extract import (
    DatasetImageSource,
    collate_indexed,
    extract_features,
    extract_features_distributed,
    image_source,
)
from ldm.evaluation.features import INCEPTION, extractor_name, load_feature_extractor
from ldm.evaluation.generated import GenerationPlan, ModelSampling, generated_batches, parse_int_list, read_prompts
from ldm.evaluation.generator_metrics import (
    NEEDS_REFERENCE,
    NEEDS_REFERENCE_FEATURES,
    MetricSettings,
    generator_metrics,
    parse_metrics,
    summary_line,
)
from ldm.evaluation.inception_score import IS_SPLITS
from ldm.evaluation.kid import KID_SUBSET_SIZE, KID_SUBSETS
from ldm.evaluation.precision_recall import PR_NEIGHBORHOOD
from ldm.evaluation.reference_stats import (
    ReferenceStats,
    has_images,
    has_statistics,
    load_reference_stats,
    save_image_batch,
)
from ldm.image_io import next_index, save_picture
from ldm.inference import choose_device, latent_factor
from ldm.models.diffusion.named_samplers import SCHEDULE_ALIASES, SCHEDULES, describe_samplers
from ldm.models.diffusion.sampler_names import sampler_choice
from ldm.sampling_cli import MAX_STEPS, add_speed_arguments, load_script_model, run_script
from ldm.util import instantiate_from_config

logger = logging.getLogger("evaluate")


def metric_names(text: str) -> list[str]:
    """``--metrics``: the names of :func:`parse_metrics`, its error as argparse's."""
    try:
        return parse_metrics(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("--samples", type=str, default=None, help="generated images: a folder, or an ADM sample batch .npz (arr_0)")
    arg("--reference", type=str, default=None,
        help="reference: a folder, an ADM-layout .npz (arr_0 images and/or mu/sigma), or a data config .yaml")
    arg("--reference-split", type=str, default="train", help="the data.params split of a --reference config")
    arg("--recompute-reference", action="store_true",
        help="compute the reference's statistics from its images even where the .npz has precomputed mu/sigma")
    arg("--save-stats", type=str, default=None, metavar="OUT.npz",
        help="write the reference's statistics (with its features) in the ADM layout and stop unless samples are given")
    arg("--metrics", type=metric_names, default=["fid"], help="comma-separated: fid,kid,is,pr,clip (default fid)")
    arg("--json", type=str, default=None, help="also write the results to this JSON file")
    arg("--limit", type=int_in(2), default=None, help="use only the first N images of folders and .npz batches")

    group = parser.add_argument_group("features")
    group.add_argument("--feature-extractor", type=str, default=INCEPTION,
                       help=f"{INCEPTION} (default; torch-fidelity's TF-compatible Inception-v3) or "
                       "'package.module:factory' returning a ldm.evaluation.features.FeatureExtractor")
    group.add_argument("--inception-weights", type=str, default=None,
                       help="the Inception-v3 weights file (default: torch hub's checkpoints folder)")
    group.add_argument("--batch-size", type=int_in(1, 4096), default=50, help="images per batch (default 50)")
    group.add_argument("--num-workers", type=int_in(0), default=0, help="data loader workers")
    group.add_argument("--device", type=str, default="auto", help="auto (CUDA, else MPS, else CPU) or a device")
    group.add_argument("--devices", type=int_in(1), default=1,
                       help="devices for feature extraction through a Lightning Trainer (folders and .npz batches)")
    group.add_argument("--accelerator", type=str, default="auto", help="the Trainer's accelerator (with --devices)")
    group.add_argument("--strategy", type=str, default=None, help="Trainer strategy (default: ddp for --devices > 1)")

    group = parser.add_argument_group("metric settings")
    group.add_argument("--kid-subsets", type=int_in(1), default=KID_SUBSETS)
    group.add_argument("--kid-subset-size", type=int_in(2), default=KID_SUBSET_SIZE)
    group.add_argument("--is-splits", type=int_in(1), default=IS_SPLITS, help="Inception Score splits (ADM: N/5000)")
    group.add_argument("--pr-k", type=int_in(1), default=PR_NEIGHBORHOOD, help="precision/recall neighbourhood k")
    group.add_argument("--clip-model", type=str, default="ViT-L-14", help="open_clip architecture of the CLIP score")
    group.add_argument("--clip-weights", type=str, default="openai",
                       help="open_clip pretrained tag in the local cache, or a checkpoint file")

    group = parser.add_argument_group("sampling on the fly (instead of --samples)")
    group.add_argument("--config", type=str, default=None, help="the model's inference config")
    group.add_argument("--ckpt", type=str, default=None, help="the model's checkpoint (.ckpt or .safetensors)")
    group.add_argument("--sampler", type=str, default="ddim", metavar="NAME",
                       help=f"the sampler: {describe_samplers()}")
    group.add_argument("--schedule", type=str.lower, default=None, choices=[*SCHEDULES, *SCHEDULE_ALIASES],
                       help="noise levels of the k-diffusion samplers")
    group.add_argument("--steps", type=int_in(1, MAX_STEPS), default=50, help="sampling steps")
    group.add_argument("--scale", type=float_in(), default=1.0, help="classifier-free guidance scale (1: none)")
    group.add_argument("--eta", type=float_in(0.0), default=None, help="eta of DDIM / the ancestral samplers")
    group.add_argument("--seeds", type=str, default="0-49999", help="one seed per sample: ranges like 0-49999")
    group.add_argument("--prompts", type=str, default=None,
                       help="prompts (text file, one per line, or COCO captions .json), cycled over the samples; "
                       "with --samples: the prompts of the images in file-name order (for the CLIP score)")
    group.add_argument("--negative-prompt", type=str, default="", help="unconditional text of guidance")
    group.add_argument("--classes", type=str, default=None, help="class labels cycled over the samples, e.g. 0-999")
    group.add_argument("--null-class", type=int_in(0), default=None,
                       help="label of the unconditional branch of a class-conditional model (1000 for cin256-v2)")
    group.add_argument("--H", type=int_in(8), default=None, help="image height (default: the model's)")
    group.add_argument("--W", type=int_in(8), default=None, help="image width (default: the model's)")
    group.add_argument("--precision", type=str, choices=["full", "autocast", "bf16", "fp16"], default="autocast")
    group.add_argument("--use_ema", action="store_true", help="use the checkpoint's EMA weights")
    group.add_argument("--outdir", type=str, default=None, help="also save the samples here as PNG files")
    group.add_argument("--save-samples", type=str, default=None, metavar="OUT.npz",
                       help="also save the samples as an ADM sample batch (arr_0 images, arr_1 labels)")
    add_speed_arguments(parser)
    opt = parser.parse_args(argv)
    if opt.samples is None and opt.config is None and not (opt.save_stats and opt.reference):
        parser.error("give --samples, or --config/--ckpt to sample, or --reference with --save-stats")
    if opt.samples is not None and opt.config is not None:
        parser.error("--samples and --config both give generated images; keep one")
    if opt.config is not None and opt.devices > 1:
        parser.error("--devices > 1 extracts features of folders and .npz batches; sample first (--save-samples), "
                     "then evaluate that batch with --devices")
    return opt


def feature_pass(opt: argparse.Namespace, extractor: torch.nn.Module, source: Dataset, desc: str) -> dict:
    """Features of every image of ``source``, through the Trainer with ``--devices`` > 1 (or ``--strategy``)."""
    if opt.devices > 1 or opt.strategy is not None:
        strategy = opt.strategy or "ddp"
        return extract_features_distributed(extractor, source, opt.batch_size, opt.accelerator, opt.devices, strategy,
                                            opt.num_workers)
    return extract_features(extractor, source, opt.batch_size, choose_device(opt.device), opt.num_workers, desc)


def reference_source(opt: argparse.Namespace) -> Dataset:
    """The reference images: a data config's split, an ``.npz`` batch or a folder."""
    path = Path(opt.reference)
    if path.suffix in (".yaml", ".yml"):
        config = read_config(require_file(path, "--reference", "data config"), "--reference")
        node = config.get("data", {}).get("params", {}).get(opt.reference_split)
        if node is None:
            raise ValueError(f"data config {path} (from --reference) has no data.params.{opt.reference_split}; "
                             "pick a split with --reference-split")
        return DatasetImageSource(instantiate_from_config(node), limit=opt.limit)
    return image_source(path, "--reference", opt.limit)


def load_reference(opt: argparse.Namespace, extractor: torch.nn.Module, metrics: list[str]) -> ReferenceStats | None:
    """The reference statistics: precomputed in an ``.npz`` (features from its ``arr_0`` when KID / PR need them
    and it has none), or computed from the reference images."""
    if opt.reference is None:
        return None
    name = extractor_name(extractor)
    path = Path(opt.reference)
    precomputed = path.suffix == ".npz" and path.is_file() and has_statistics(path) and not opt.recompute_reference
    if precomputed:
        stats = load_reference_stats(path)
        stats.check_extractor(name, path)
        wants_features = opt.save_stats or any(m in NEEDS_REFERENCE_FEATURES for m in metrics)
        if stats.pool_features is None and wants_features and has_images(path):
            stats.pool_features = feature_pass(opt, extractor, reference_source(opt), "reference")["pool"]
        logger.info("reference: precomputed statistics of %s (%s)", path, name)
        return stats
    features = feature_pass(opt, extractor, reference_source(opt), "reference")
    return ReferenceStats.from_features(features["pool"], name, features.get("logits"))


def clip_scorer(opt: argparse.Namespace, device: torch.device) -> OpenClipScorer:
    return OpenClipScorer.from_pretrained(opt.clip_model, opt.clip_weights).to(device)


def folder_clip_scores(opt: argparse.Namespace, source: Dataset, device: torch.device) -> np.ndarray:
    """Per-image CLIP scores of a folder / batch whose images follow ``--prompts`` in order (cycled)."""
    prompts = read_prompts(opt.prompts)
    scorer = clip_scorer(opt, device)
    scores = []
    for indices, images in DataLoader(source, batch_size=opt.batch_size, num_workers=opt.num_workers,
                                      collate_fn=collate_indexed):
        scores.append(scorer(images.to(device), [prompts[int(i) % len(prompts)] for i in indices]).cpu())
    return torch.cat(scores).numpy()


def save_pngs(images: torch.Tensor, folder: Path) -> None:
    """uint8 ``(B, 3, H, W)`` as ``folder/00000.png, ...`` numbered after the files already there (exact pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    first = next_index(folder, r"(\d+)\.png")
    for offset, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        save_picture(Image.fromarray(image), folder / f"{first + offset:05}.png")


def sampled_features(opt: argparse.Namespace, extractor: torch.nn.Module, metrics: list[str],
                     ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Sample the plan of the flags with the model of ``--config`` / ``--ckpt``, extracting features (and CLIP
    scores) batch by batch; the images go to ``--outdir`` / ``--save-samples`` when asked."""
    sampler_choice(opt.sampler, opt.schedule, opt.eta)
    plan = GenerationPlan(parse_int_list(opt.seeds, "--seeds"),
                          read_prompts(opt.prompts) if opt.prompts else None,
                          parse_int_list(opt.classes, "--classes") if opt.classes else None)
    png_folder = Path(opt.outdir) / "samples" if opt.outdir else None
    opt.outdir = opt.outdir or "."  # load_script_model checks that --outdir is writable
    opt.f = opt.C = None
    opt.seed, opt.trust_config, opt.config_is_default, opt.parameterization = plan.seeds[0], False, False, None
    loaded = load_script_model(opt)
    sampler = loaded.ready_sampler(opt)
    model = loaded.model
    factor = latent_factor(model)
    height = opt.H // factor if opt.H else model.image_size
    width = opt.W // factor if opt.W else model.image_size
    sampling = ModelSampling(model, sampler, opt.steps, opt.scale, (model.channels, height, width), opt.eta,
                             opt.negative_prompt, opt.null_class)
    device = loaded.device
    extractor = extractor.to(device)
    scorer = clip_scorer(opt, device) if "clip" in metrics else None
    chunks, scores, kept, labels = [], [], [], []
    with loaded.sampling_scope():
        for images, prompts, classes in generated_batches(sampling, plan, opt.batch_size):
            with torch.autocast(device.type, enabled=False):
                chunks.append({key: value.float().cpu() for key, value in extractor(images.to(device)).items()})
                if scorer is not None:
                    scores.append(scorer(images.to(device), prompts or []).cpu())
            if png_folder is not None:
                save_pngs(images, png_folder)
            if opt.save_samples:
                kept.append(images.permute(0, 2, 3, 1).numpy())
                labels.extend(classes or [])
    if opt.save_samples:
        save_image_batch(opt.save_samples, np.concatenate(kept), np.array(labels) if labels else None)
    features = {key: torch.cat([chunk[key] for chunk in chunks]).numpy() for key in chunks[0]}
    return features, (torch.cat(scores).numpy() if scores else None)


def write_results(opt: argparse.Namespace, results: dict[str, Any], emit: Callable[[str], None]) -> None:
    """JSON on stdout (and ``--json``), then the one-line table."""
    text = json.dumps(results, indent=2, sort_keys=True)
    if opt.json:
        Path(opt.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opt.json).write_text(text + "\n", encoding="utf-8")
    emit(text)
    emit(summary_line(results))


def main(argv: list[str] | None = None) -> None:
    """Generator metrics, or with a first argument ``autoencoder`` the autoencoder evaluation
    (:mod:`ldm.evaluation.autoencoder_cli`, which takes the rest of the arguments)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["autoencoder"]:
        autoencoder_cli.main(argv[1:])
        return
    opt = parse_args(argv)
    extractor = load_feature_extractor(opt.feature_extractor, opt.inception_weights)
    generating = opt.samples is not None or opt.config is not None
    metrics = opt.metrics if generating else []
    needs_reference = any(name in NEEDS_REFERENCE for name in metrics)
    if needs_reference and opt.reference is None:
        raise ValueError(f"--metrics {','.join(metrics)} compares with a reference: pass --reference")
    reference = load_reference(opt, extractor, metrics) if (needs_reference or opt.save_stats) else None
    if opt.save_stats and rank_zero_only.rank == 0:
        logger.info("reference statistics written to %s", reference.save(opt.save_stats))
    if not generating:
        return
    if opt.samples is not None:
        source = image_source(opt.samples, "--samples", opt.limit)
        features = feature_pass(opt, extractor, source, "generated")
        scores = folder_clip_scores(opt, source, choose_device(opt.device)) if "clip" in metrics else None
    else:
        features, scores = sampled_features(opt, extractor, metrics)
    settings = MetricSettings(opt.kid_subsets, opt.kid_subset_size, opt.is_splits, None, opt.pr_k,
                              str(choose_device(opt.device)))
    results: dict[str, Any] = generator_metrics(features, reference, metrics, settings, scores)
    results["feature_extractor"] = extractor_name(extractor)
    if rank_zero_only.rank == 0:
        write_results(opt, results, lambda line: print(line, file=sys.stdout))


if __name__ == "__main__":
    run_script(main)
