"""scripts/knn2img.py end to end on a tiny retrieval-augmented model: a LatentDiffusion of the RDM config's
structure (cross-attention, ``cond_stage`` ``torch.nn.Identity``) whose UNet takes the 32-wide embeddings of a tiny
OpenAI-layout CLIP registered with open_clip, random weights in a safetensors checkpoint, 2 sampling steps; and the
shipped full-size RDM config."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import ldm.modules.encoders.clip_image as clip_image
import ldm.retrieval.sampling as retrieval_sampling
from ldm.checkpoint import save_safetensors
from ldm.inference import latent_factor, pixel_multiple
from ldm.modules.attention import BasicTransformerBlock
from ldm.retrieval.sampling import load_text_encoder
from ldm.sampling_cli import run_script
from ldm.util import instantiate_from_config
from scripts.knn2img import RDM_CONFIG, parse_args
from scripts.knn2img import main as knn2img
from scripts.train_searcher import main as train_searcher

ROOT = Path(__file__).resolve().parents[1]
#: sha256 of configs/retrieval-augmented-diffusion/768x768.yaml in CompVis/latent-diffusion.
RDM_CONFIG_SHA256 = "e9a3649b2acc28adb2d4604d37a6e31a1fd654c27b82ace438dbaba743377a9e"
CLIP_ARCH = "ldm-test-knn2img-clip"
CLIP_CONFIG = {  # an OpenAI-layout CLIP with 32-wide embeddings (width 64: one 64-wide head per layer)
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}
WIDTH = CLIP_CONFIG["embed_dim"]
TINY_RDM = {  # the structure of the shipped RDM config, tiny: f=4 first stage, 2-level UNet, context_dim = WIDTH
    "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "params": {
        "linear_start": 0.0015, "linear_end": 0.015, "timesteps": 1000, "first_stage_key": "jpg",
        "cond_stage_key": "nix", "image_size": 8, "channels": 4, "cond_stage_trainable": False,
        "conditioning_key": "crossattn", "scale_factor": 0.22765929, "use_ema": False,
        "unet_config": {
            "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
            "params": {
                "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
                "attention_resolutions": [2, 1], "num_res_blocks": 1, "channel_mult": [1, 2],
                "num_head_channels": 16, "use_spatial_transformer": True, "transformer_depth": 1,
                "context_dim": WIDTH,
            },
        },
        "first_stage_config": {
            "target": "ldm.models.autoencoder.AutoencoderKL",
            "params": {
                "embed_dim": 4,
                "ddconfig": {
                    "double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                    "ch_mult": [1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
                },
                "lossconfig": {"target": "torch.nn.Identity"},
            },
        },
        "cond_stage_config": {"target": "torch.nn.Identity"},
    },
}
FAST = ["--H", "32", "--W", "32", "--ddim_steps", "2", "--n_samples", "2", "--seed", "3", "--precision", "full",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny CLIP registered with its weights in a ``clip.load`` cache folder, and the tiny RDM's config and
    safetensors checkpoint (random weights, none zero, so the conditioning reaches the output)."""
    folder = tmp_path_factory.mktemp("knn2img")
    (folder / f"{CLIP_ARCH}.json").write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(str(folder / f"{CLIP_ARCH}.json"))
    torch.manual_seed(0)
    clip = open_clip.create_model(CLIP_ARCH, pretrained=None, force_quick_gelu=True)
    (folder / "clip").mkdir()
    torch.save(clip.state_dict(), folder / "clip" / f"{CLIP_ARCH}.pt")
    config = {"model": TINY_RDM}
    model = instantiate_from_config(OmegaConf.create(config).model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            noise = 0.05 * torch.randn(weight.shape, generator=generator)
            weight.copy_(1 + noise if weight.ndim == 1 and name.endswith("weight") else noise)
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    save_safetensors(folder / "model.safetensors", model.state_dict())
    return {"cache": folder / "clip", "config": folder / "config.yaml", "ckpt": folder / "model.safetensors"}


@pytest.fixture(autouse=True)
def workdir(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Offline, the tiny CLIP's cache, one thread, and a fresh working directory (where data/rdm/... is looked up)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(clip_image, "OPENAI_CACHE", files["cache"])
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def _run(files: dict[str, Path], outdir: Path, *extra: str) -> None:
    knn2img(["--config", str(files["config"]), "--ckpt", str(files["ckpt"]), "--clip_type", CLIP_ARCH,
             "--outdir", str(outdir), *FAST, *extra])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _database(workdir: Path, count: int = 40) -> np.ndarray:
    embeddings = np.random.default_rng(7).normal(size=(count, WIDTH)).astype(np.float32)
    folder = workdir / "data/rdm/retrieval_databases/openimages"
    folder.mkdir(parents=True)
    np.savez(folder / "part-0.npz", embedding=embeddings[:25], img_id=np.arange(25))
    np.savez(folder / "part-1.npz", embedding=embeddings[25:], img_id=np.arange(25, count))
    return embeddings


def test_knn2img_writes_samples_and_one_grid_per_pass(files, workdir):
    _run(files, workdir / "out", "--n_iter", "2")
    samples = sorted((workdir / "out" / "samples").iterdir())
    assert [p.name for p in samples] == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert all(_pixels(p).shape == (32, 32, 3) for p in samples)
    grids = sorted(p.name for p in (workdir / "out").glob("grid-*.png"))
    assert grids == ["grid-0000.png", "grid-0001.png"]  # as the original: a grid after each --n_iter pass
    grid = _pixels(workdir / "out" / "grid-0001.png")
    assert grid.shape == (2 + 34, 2 + 2 * 34, 3)  # one row of --n_samples 2, 2-pixel padding
    np.testing.assert_array_equal(grid[2:34, 36:68], _pixels(samples[3]))
    _run(files, workdir / "out", "--plms", "--skip_grid", "--n_rows", "1")
    assert len(list((workdir / "out" / "samples").iterdir())) == 6
    assert len(list((workdir / "out").glob("grid-*.png"))) == 2


def test_knn2img_conditions_on_text_and_the_exact_neighbours(files, workdir, monkeypatch):
    embeddings = _database(workdir)
    train_searcher(["-d", "data/rdm/retrieval_databases/openimages", "-t", "data/rdm/searchers/openimages",
                    "-k", "3"])
    seen = []
    build = retrieval_sampling.retrieval_conditioning

    def recording(encoder, prompts, searcher, knn, scale):
        c, uc = build(encoder, prompts, searcher, knn, scale)
        seen.append((c, uc, None if searcher is None else searcher.backend))
        return c, uc

    monkeypatch.setattr(retrieval_sampling, "retrieval_conditioning", recording)
    _run(files, workdir / "knn", "--use_neighbors", "--database", "openimages", "--knn", "3", "--skip_grid")
    _run(files, workdir / "repeat", "--use_neighbors", "--database", "openimages", "--knn", "3", "--n_repeat", "2",
         "--skip_grid")
    _run(files, workdir / "text", "--skip_grid")
    (c, uc, backend), (repeated, _, _), (text, _, no_searcher) = seen
    assert backend == "exact-file" and no_searcher is None
    assert c.shape == (2, 1 + 3, WIDTH) and repeated.shape == (2, 2 + 3, WIDTH) and text.shape == (2, 1, WIDTH)
    assert torch.equal(uc, torch.zeros_like(c))
    torch.testing.assert_close(c[:, :1], text)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    nearest = np.argsort(-(text[0, 0].numpy() @ unit.T))[:3]
    torch.testing.assert_close(c[0, 1:], torch.from_numpy(unit[nearest]))
    with_knn, text_only = (_pixels(workdir / name / "samples" / "00000.png") for name in ("knn", "text"))
    assert with_knn.shape == (32, 32, 3) and not np.array_equal(with_knn, text_only)


def test_bad_input_ends_in_one_line(files, workdir, monkeypatch, capsys):
    monkeypatch.delenv("LDM_TRACEBACK", raising=False)
    model = ["--config", str(files["config"]), "--ckpt", str(files["ckpt"]), "--clip_type", CLIP_ARCH, *FAST]
    cases = [
        ([*model, "--use_neighbors", "--database", "openimages"],
         "retrieval database folder not found: data/rdm/retrieval_databases/openimages"),
        ([*model, "--ckpt", "models/rdm/rdm768x768/model.ckpt"], "models/rdm/rdm768x768/model.ckpt"),
        ([*model, "--config", "absent.yaml"], "config file not found: absent.yaml"),
        ([*model, "--negative_prompt", "blurry"], "drop --negative_prompt"),
        ([*model, "--H", "36"], "--H 36 is not a multiple of 8"),
        ([*model, "--clip_type", "ViT-Q/99"], "'ViT-Q/99' is neither an OpenAI CLIP model name"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_script(lambda argv=argv: knn2img([*argv, "--outdir", str(workdir / "out")]))
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and message in lines[0], lines
        assert not (workdir / "out").exists()


def test_text_encoder_of_another_width_names_the_fix(files):
    narrow = BasicTransformerBlock(8, 1, 8, context_dim=16)
    with pytest.raises(ValueError, match=rf"embeds text in {WIDTH} dimensions but the model's cross-attention takes "
                                         r"16; use the CLIP model the RDM was trained with \(ViT-L/14: 768\)"):
        load_text_encoder(CLIP_ARCH, 1, narrow, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"--n_repeat 0"):
        load_text_encoder(CLIP_ARCH, 0, narrow, torch.device("cpu"))


def test_knn2img_defaults_are_the_originals():
    opt = parse_args([])
    assert opt.prompt == "a painting of a virus monster playing guitar"
    assert (opt.outdir, opt.skip_grid, opt.ddim_steps, opt.n_repeat, opt.plms) == (
        "outputs/txt2img-samples", False, 50, 1, False)
    assert (opt.ddim_eta, opt.sampler) == (None, "ddim")  # None: DDIM's eta 0.0
    assert (opt.n_iter, opt.H, opt.W, opt.n_samples, opt.n_rows, opt.scale, opt.from_file) == (
        1, 768, 768, 3, 0, 5.0, None)
    assert (opt.config, opt.ckpt) == (RDM_CONFIG, "models/rdm/rdm768x768/model.ckpt")
    assert (opt.clip_type, opt.database, opt.use_neighbors, opt.knn) == ("ViT-L/14", "artbench-surrealism", False, 10)
    with pytest.raises(SystemExit):
        parse_args(["--database", "laion"])


def test_shipped_rdm_config_is_the_original_and_builds_full_size_on_meta(monkeypatch):
    path = ROOT / RDM_CONFIG
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RDM_CONFIG_SHA256
    config = OmegaConf.load(path).model
    with torch.device("meta"):
        model = instantiate_from_config(copy.deepcopy(config))
    unet = model.model.diffusion_model
    assert (model.channels, latent_factor(model), pixel_multiple(model)) == (16, 16, 128)  # 768 px → 48 latent
    assert unet.input_blocks[0][0].weight.shape == (448, 16, 3, 3)
    widths = {m.attn2.to_k.in_features for m in unet.modules() if isinstance(m, BasicTransformerBlock)}
    assert widths == {768}  # CLIP ViT-L/14 embeddings as context
    assert isinstance(model.cond_stage_model, torch.nn.Identity)  # the context comes from knn2img, not the model
    assert all(p.is_meta for p in model.parameters())
