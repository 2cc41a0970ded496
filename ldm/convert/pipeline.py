"""A whole Stable Diffusion checkpoint (v1 or 2.x, eps or v) ↔ a diffusers ``StableDiffusionPipeline`` folder.

``to_diffusers`` writes ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and
``model_index.json`` (safetensors weights); ``to_ldm`` reads such a folder (local files only) back into the
original key layout (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``) and the config
that builds it, filled in from the pipeline's component configs. diffusers is an optional dependency.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from ldm.convert import clip_text, openclip_text
from ldm.convert.ldm_config import ldm_config_from_diffusers
from ldm.convert.unet import unet_diffusers_config, unet_from_diffusers, unet_to_diffusers
from ldm.convert.vae import vae_diffusers_config, vae_from_diffusers, vae_to_diffusers
from ldm.modules.encoders.clip_tokenizer import offline_clip_tokenizer
from ldm.util import instantiate_from_config

logger = logging.getLogger(__name__)

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text": "cond_stage_model."}
#: Where ``to_diffusers`` keeps the OpenCLIP tensors a ``CLIPTextModel`` has no place for.
OPENCLIP_EXTRA = "openclip_extra.safetensors"
OPENCLIP = "FrozenOpenCLIPEmbedder"
BETA_SCHEDULES = {"linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


def require_diffusers() -> Any:
    """The ``diffusers`` module, or ``ModuleNotFoundError`` with the install command."""
    try:
        import diffusers
    except ImportError as error:
        raise ModuleNotFoundError(
            "converting to or from diffusers needs the diffusers package: pip install diffusers "
            "(or pip install -e '.[diffusers]')"
        ) from error
    return diffusers


def _split(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts = {
        name: {k.removeprefix(p): v for k, v in state_dict.items() if k.startswith(p)} for name, p in PREFIXES.items()
    }
    for name, part in parts.items():
        if not part:
            raise ValueError(f"the checkpoint has no {PREFIXES[name]}* tensors; is it a Stable Diffusion model?")
    return parts


def _with_weights(cls: type, config: dict, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``cls(config)`` built without allocating, then given ``weights`` (strictly)."""
    with torch.device("meta"):
        module = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    module.load_state_dict(weights, strict=True, assign=True)
    return module.eval()


def _text_encoder(cond: DictConfig, text: dict[str, torch.Tensor]) -> tuple[Any, dict, bool]:
    """``(CLIPTextModel, extra tensors, is_openclip)`` of the conditioner weights ``text``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if cond.target.endswith(OPENCLIP):
        import open_clip

        params = cond.get("params", {})
        layer_idx = {"last": 0, "penultimate": 1}[params.get("layer", "last")]
        text_cfg = open_clip.get_model_config(params.get("arch", "ViT-H-14"))["text_cfg"]
        heads = text_cfg.get("heads", text_cfg["width"] // 64)
        config = CLIPTextConfig(**openclip_text.openclip_text_config(text, heads, layer_idx))
        weights, extra = openclip_text.openclip_to_diffusers(text, config.num_hidden_layers)
        return _with_weights(CLIPTextModel, config, weights), extra, True
    if not cond.target.endswith("FrozenCLIPEmbedder"):
        raise ValueError(f"cond_stage_config target {cond.target} has no diffusers text encoder; use SD v1 or 2.x")
    embedder = instantiate_from_config(cond)
    tower = embedder.transformer  # transformers 5: wrapped to keep the ``text_model.`` keys
    config = tower.config if hasattr(tower, "config") else tower.text_model.config
    with torch.device("meta"):
        target_keys = set(CLIPTextModel(config).state_dict())
    weights = clip_text.clip_to_diffusers(text, target_keys)
    return _with_weights(CLIPTextModel, config, weights), {}, False


def _scheduler(diffusers: Any, params: DictConfig) -> Any:
    schedule = params.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES or params.get("parameterization", "eps") not in PREDICTION_TYPES:
        raise ValueError(f"beta_schedule {schedule!r} / parameterization has no diffusers scheduler equivalent")
    return diffusers.PNDMScheduler(
        num_train_timesteps=params.get("timesteps", 1000),
        beta_start=params.get("linear_start", 1e-4),
        beta_end=params.get("linear_end", 2e-2),
        beta_schedule=BETA_SCHEDULES[schedule],
        prediction_type=PREDICTION_TYPES[params.get("parameterization", "eps")],
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def to_diffusers(config: DictConfig, state_dict: dict[str, torch.Tensor], out: Path) -> None:
    """Write the ``LatentDiffusion`` of ``config`` with weights ``state_dict`` as a pipeline folder ``out``.

    UNet and autoencoder are built on the meta device only to read their structure; tensors are moved, not copied.
    """
    diffusers = require_diffusers()
    from safetensors.torch import save_file

    params = config.model.params
    parts = _split(state_dict)
    with torch.device("meta"):
        unet = instantiate_from_config(params.unet_config)
        vae = instantiate_from_config(params.first_stage_config)
    unet_config = {**unet_diffusers_config(unet), "sample_size": params.get("image_size", unet.image_size)}
    vae_config = {**vae_diffusers_config(vae), "scaling_factor": params.get("scale_factor", 1.0)}
    text_encoder, extra, is_openclip = _text_encoder(params.cond_stage_config, parts["text"])
    tokenizer = offline_clip_tokenizer(text_encoder.config.max_position_embeddings)
    if is_openclip:
        tokenizer.pad_token = "!"  # open_clip pads with id 0
    pipe = diffusers.StableDiffusionPipeline(
        vae=_with_weights(diffusers.AutoencoderKL, vae_config, vae_to_diffusers(vae, parts["vae"])),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=_with_weights(diffusers.UNet2DConditionModel, unet_config, unet_to_diffusers(unet, parts["unet"])),
        scheduler=_scheduler(diffusers, params),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    if extra:
        save_file({k: v.contiguous() for k, v in extra.items()}, str(out / "text_encoder" / OPENCLIP_EXTRA))
    logger.info("wrote a StableDiffusionPipeline folder to %s", out)


def _load_folder(out: Path) -> dict[str, Any]:
    diffusers = require_diffusers()
    from transformers import CLIPTextModel

    if not (out / "model_index.json").is_file():
        raise FileNotFoundError(f"{out} has no model_index.json; pass a StableDiffusionPipeline folder")
    local = {"local_files_only": True}
    return {
        "unet": diffusers.UNet2DConditionModel.from_pretrained(out / "unet", **local),
        "vae": diffusers.AutoencoderKL.from_pretrained(out / "vae", **local),
        "text_encoder": CLIPTextModel.from_pretrained(out / "text_encoder", **local),
        "scheduler": diffusers.PNDMScheduler.load_config(out / "scheduler", **local),
    }


def to_ldm(folder: Path, openclip_arch: str = "ViT-H-14") -> tuple[dict[str, torch.Tensor], DictConfig]:
    """``(state_dict, config)`` in the original layout from the pipeline folder ``folder``.

    The config starts from ``configs/stable-diffusion/{v1-inference, v2-inference, v2-inference-v}.yaml`` (by the
    text encoder's activation and the scheduler's ``prediction_type``) with the UNet, autoencoder and schedule
    values of the pipeline; ``openclip_arch`` names the OpenCLIP tower of an SD 2.x pipeline.
    """
    parts = _load_folder(folder)
    text_encoder = parts["text_encoder"]
    is_openclip = text_encoder.config.hidden_act == "gelu"
    config = ldm_config_from_diffusers(
        parts["unet"].config, parts["vae"].config, parts["scheduler"], is_openclip, openclip_arch
    )
    params = config.model.params
    with torch.device("meta"):
        unet = instantiate_from_config(params.unet_config)
        vae = instantiate_from_config(params.first_stage_config)
    text = text_encoder.state_dict()
    if is_openclip:
        extra_file = folder / "text_encoder" / OPENCLIP_EXTRA
        extra = None
        if extra_file.is_file():
            from safetensors.torch import load_file

            extra = load_file(str(extra_file))
        else:
            logger.warning("%s has no %s: the unused last OpenCLIP block is written as zeros", folder, OPENCLIP_EXTRA)
        text = openclip_text.openclip_from_diffusers(text, extra)
    else:
        text = {f"transformer.text_model.{k.removeprefix('text_model.')}": v for k, v in text.items()}
        text = {k: v for k, v in text.items() if not k.endswith("position_ids")}
    state_dict = {PREFIXES["unet"] + k: v for k, v in unet_from_diffusers(unet, parts["unet"].state_dict()).items()}
    state_dict.update({PREFIXES["vae"] + k: v for k, v in vae_from_diffusers(vae, parts["vae"].state_dict()).items()})
    state_dict.update({PREFIXES["text"] + k: v for k, v in text.items()})
    return state_dict, config

