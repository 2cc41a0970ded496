"""Text-to-image sampling with a retrieval-augmented diffusion model (RDM, 768x768), conditioned on the CLIP text
embedding of the prompt and, with --use_neighbors, on the CLIP image embeddings of its --knn nearest neighbours in a
retrieval database.

    python scripts/knn2img.py --prompt "a happy bear reading a newspaper, oil on canvas"
    python scripts/knn2img.py --prompt "a fox in the snow" --use_neighbors --database openimages --knn 10 --plms

The database is read from data/rdm/retrieval_databases/<database>/ (.npz files with an 'embedding' array) and its
searcher from data/rdm/searchers/<database>/ (scripts/train_searcher.py makes one; without it the database is
searched directly). The search is exact; ScaNN is used only when installed and a ScaNN searcher is there.

Writes outdir/samples/00000.png, ... (numbered after the files already there) and one grid per --n_iter pass,
outdir/grid-0000.png, grid-0001.png, ...

Module-level names other code imports from this script: ``DATABASES``, ``Searcher``, ``chunk``,
``load_model_from_config(config, ckpt, verbose=False)``.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ldm.cli.validation import int_in
from ldm.inference import check_image_size, chunk, latent_factor, pixel_multiple, prompt_batches
from ldm.inference import load_eval_model as load_model_from_config
from ldm.models.diffusion.named_samplers import sampler_choice
from ldm.retrieval.database import DATABASES
from ldm.retrieval.sampling import check_crossattn_model, load_text_encoder, sample_with_retrieval
from ldm.retrieval.searcher import Searcher
from ldm.sampling_cli import SamplingStart, load_script_model, run_script, sampling_parser

__all__ = ["DATABASES", "Searcher", "chunk", "load_model_from_config", "main", "parse_args"]

logger = logging.getLogger("knn2img")

RDM_CONFIG = "configs/retrieval-augmented-diffusion/768x768.yaml"
RDM_CKPT = "models/rdm/rdm768x768/model.ckpt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = sampling_parser(__doc__, outdir="outputs/txt2img-samples", n_iter=1, n_samples=3, scale=5.0, seed=None,
                             config=RDM_CONFIG, ckpt=RDM_CKPT, f=None, C=None)
    arg = parser.add_argument
    arg("--H", type=int_in(1), default=768, help="image height, in pixel space")
    arg("--W", type=int_in(1), default=768, help="image width, in pixel space")
    arg("--n_repeat", type=int_in(1), default=1,
        help="number of repeats in CLIP latent space: the text embedding enters as that many context tokens")
    arg("--clip_type", type=str, default="ViT-L/14",
        help="which CLIP model to use for retrieval and NN encoding (an OpenAI CLIP name, an open_clip "
        "architecture or the path of an OpenAI CLIP weights file)")
    arg("--database", type=str, default="artbench-surrealism", choices=DATABASES,
        help="The database used for the search, only applied when --use_neighbors=True (read from "
        "data/rdm/retrieval_databases/<database>/, its searcher from data/rdm/searchers/<database>/)")
    arg("--use_neighbors", action="store_true",
        help="Include neighbors in addition to text prompt for conditioning")
    arg("--knn", type=int_in(1), default=10,
        help="The number of included neighbors, only applied when --use_neighbors=True")
    return parser.parse_args(argv)


def check_options(opt: argparse.Namespace) -> None:
    """``ValueError`` naming the fix for flags this script cannot honour."""
    if opt.negative_prompt:
        raise ValueError("--negative_prompt: the RDM's unconditional conditioning is the zero embedding, not a text; "
                         "drop --negative_prompt")
    if opt.use_neighbors and opt.knn < 1:
        raise ValueError(f"--knn {opt.knn}: --use_neighbors needs at least one neighbour; pass e.g. --knn 10")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt = parse_args(argv)
    check_options(opt)
    sampler_choice(opt.sampler, opt.schedule, opt.ddim_eta)
    batches = prompt_batches(opt.prompt, opt.from_file, opt.n_samples)
    searcher = Searcher(opt.database) if opt.use_neighbors else None
    if opt.f is not None:
        check_image_size(opt.H, opt.W, opt.f)
    loaded = load_script_model(opt, lambda model: check_crossattn_model(model, opt.config))
    model = loaded.model
    check_image_size(opt.H, opt.W, pixel_multiple(model), why="the first stage's factor times the UNet's downsampling")
    encoder = load_text_encoder(opt.clip_type, opt.n_repeat, model, loaded.device)
    sampler = loaded.ready_sampler(opt)
    logger.info("sampler: %r, %d steps, guidance scale %.2f", sampler, opt.ddim_steps, opt.scale)

    factor = latent_factor(model)
    shape = (model.channels, opt.H // factor, opt.W // factor)
    start_code = torch.randn((opt.n_samples, *shape), device=loaded.device) if opt.fixed_code else None
    with loaded.sampling_scope():
        sample_with_retrieval(opt, model, sampler, batches, SamplingStart(shape=shape, noise=start_code), encoder,
                              searcher)


if __name__ == "__main__":
    run_script(main)
