"""``NoisyLatentImageClassifier``: a classifier of the noisy latents of a frozen latent diffusion model.

The noise-aware classifier p_φ(y | z_t, t) of classifier guidance (Dhariwal & Nichol 2021), trained in latent
space: for a batch with images x and labels y,

    z = the frozen model's scaled first-stage encoding of x,   t ~ U{0, …, T − 1},
    z_t = q_sample(z, t) = √ᾱ_t z + √(1 − ᾱ_t) ε,           loss = CE(f_φ(z_t, t), y).

``label_key`` picks the task: ``"class_label"`` trains an ``EncoderUNetModel`` (logits ``(B, K)``),
``"segmentation"`` a ``UNetModel`` (logits ``(B, K, h, w)`` at the latent resolution, the one-hot ``(B, H, W, K)``
maps brought down by nearest-neighbour halvings). Both take the diffusion UNet's settings with ``in_channels``
= its ``out_channels`` and ``out_channels`` = ``num_classes``. Validation also records top-1/top-5 accuracy at
the fixed t = 0, log_every_t, 2·log_every_t, ….

Changes from the original (``latent-diffusion``'s ``ldm/models/diffusion/classifier.py``), for Lightning 2 and
its bugs:

- ``diffusion_path`` may name the config YAML itself, or, as in the original, a log directory whose newest
  ``configs/*-project.yaml`` is used (its targets screened, :mod:`ldm.config_trust`); checkpoints load through
  :mod:`ldm.checkpoint` (no pickled code);
- :meth:`get_x_noisy` is ``q_sample`` (the original read ``use_continuous_noise``, which no diffusion model has);
- a given ``label_key`` wins over the diffusion model's ``cond_stage_key`` (the original ignored it);
- top-k counts hits over the k predictions (the original summed over the last axis, the width of a map) with
  k ≤ ``num_classes``; the learning rate is logged in training only (no optimizer in ``trainer.validate``), and
  no value is logged with both ``on_step`` and ``on_epoch`` off (an error in Lightning 2);
- the fixed-t validation runs do not add to ``val/loss``; their accuracies are logged at the end of the
  validation epoch as ``val/acc@1_t<t>`` and ``val/acc@5_t<t>`` (the original collected and dropped them).
"""

from __future__ import annotations

import logging
import re
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from ldm.checkpoint import apply_state_dict, load_state_dict_file
from ldm.config_trust import check_config
from ldm.models.diffusion.diffusion_wrapper import disabled_train, freeze_module
from ldm.modules.diffusionmodules.openaimodel import EncoderUNetModel, UNetModel
from ldm.optim import adam
from ldm.util import default, instantiate_from_config, ismap, log_txt_as_img, to_container

logger = logging.getLogger(__name__)

__all__ = ["NoisyLatentImageClassifier", "disabled_train"]

#: The top-k accuracies logged.
TOP_K = (1, 5)
#: The network trained for each label key.
CLASSIFIER_MODELS = {"class_label": EncoderUNetModel, "segmentation": UNetModel}


def _natural_key(path: Path) -> list[Any]:
    """Sort key that orders embedded numbers by value (``run-9`` before ``run-10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def diffusion_model_config(diffusion_path: str | Path) -> DictConfig:
    """The ``model`` section of the diffusion model's config: ``diffusion_path`` is the YAML file, or a log
    directory whose newest (natural order) ``configs/*-project.yaml`` is read."""
    path = Path(diffusion_path)
    if path.is_dir():
        candidates = sorted((path / "configs").glob("*-project.yaml"), key=_natural_key)
        if not candidates:
            raise FileNotFoundError(
                f"diffusion_path={str(path)!r} is a directory without configs/*-project.yaml; pass the diffusion "
                "model's config YAML or the log directory main.py wrote for it."
            )
        path = candidates[-1]
    elif not path.is_file():
        raise FileNotFoundError(f"diffusion_path={str(path)!r}: no such config file or log directory.")
    config = OmegaConf.load(path)
    if Path(diffusion_path).is_dir():  # found in a log directory, beside its checkpoints: screened
        check_config(config, path)
    if "model" not in config:
        raise ValueError(f"{path} has no 'model' section; diffusion_path must name a diffusion model's config.")
    return config.model


def latent_halvings(diffusion_model: Any) -> int:
    """How many times the first stage halves the image side: its encoder's ``num_resolutions`` − 1 (0 without
    an encoder, e.g. ``IdentityFirstStage``)."""
    encoder = getattr(diffusion_model.first_stage_model, "encoder", None)
    return 0 if encoder is None else encoder.num_resolutions - 1


def resolve_label_key(label_key: str | None, diffusion_model: Any) -> str:
    """``label_key`` when given, else the diffusion model's ``cond_stage_key``; it must name a classifier."""
    key = label_key if label_key is not None else getattr(diffusion_model, "cond_stage_key", None)
    if key not in CLASSIFIER_MODELS:
        raise ValueError(
            f"label_key={key!r} (from model.params.label_key or the diffusion model's cond_stage_key) has no "
            f"classifier; use one of {sorted(CLASSIFIER_MODELS)}."
        )
    return key


class NoisyLatentImageClassifier(pl.LightningModule):
    """Trains a classifier on noisy latents z_t of the frozen diffusion model of ``diffusion_path`` (module
    docstring). ``diffusion_ckpt_path`` sets that model's weights, ``ckpt_path`` the classifier's (the whole
    module's state dict); ``pool`` is the ``EncoderUNetModel`` head; AdamW with ``weight_decay`` and an optional
    per-step LambdaLR from ``scheduler_config``; ``log_steps`` noise levels in the segmentation image logs."""

    def __init__(
        self,
        diffusion_path: str | Path,
        num_classes: int,
        ckpt_path: str | None = None,
        pool: str = "attention",
        label_key: str | None = None,
        diffusion_ckpt_path: str | None = None,
        scheduler_config: Any = None,
        weight_decay: float = 1.0e-2,
        log_steps: int = 10,
        monitor: str = "val/loss",
        *args: Any,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.diffusion_config = diffusion_model_config(diffusion_path)
        self.diffusion_config.params.ckpt_path = diffusion_ckpt_path
        self.load_diffusion()
        self.num_classes, self.monitor, self.weight_decay = num_classes, monitor, weight_decay
        self.scheduler_config, self.use_scheduler = scheduler_config, scheduler_config is not None
        self.numd = latent_halvings(self.diffusion_model)
        self.log_steps = log_steps
        self.log_time_interval = max(self.diffusion_model.num_timesteps // log_steps, 1)
        self.label_key = resolve_label_key(label_key, self.diffusion_model)
        self.load_classifier(ckpt_path, pool)
        self.noisy_acc: dict[int, dict[str, list[float]]] = {}

    # ---- building ------------------------------------------------------------------------------------------

    def init_from_ckpt(
        self, path: str | Path, ignore_keys: list[str] | tuple[str, ...] = (), only_model: bool = False
    ) -> None:
        """Load a .ckpt / .safetensors state dict (safely, non-strict, keys under ``ignore_keys`` dropped) into the
        whole module, or into the classifier network alone with ``only_model``."""
        state_dict = load_state_dict_file(path, config_key="model.params.ckpt_path")
        target = self.model if only_model else self
        apply_state_dict(target, state_dict, ignore_keys=tuple(ignore_keys), what=f"classifier from {path}")

    def load_diffusion(self) -> None:
        """Build the diffusion model of :attr:`diffusion_config`, frozen (eval mode for good, no gradients)."""
        self.diffusion_model = freeze_module(instantiate_from_config(self.diffusion_config))

    def load_classifier(self, ckpt_path: str | None, pool: str) -> None:
        """Build the classifier network from the diffusion UNet's settings (module docstring), then load
        ``ckpt_path`` when given."""
        unet = self.diffusion_config.params.unet_config.params
        settings = to_container(deepcopy(unet))
        settings.update(in_channels=unet.out_channels, out_channels=self.num_classes)
        if self.label_key == "class_label":
            settings["pool"] = pool
        self.model = CLASSIFIER_MODELS[self.label_key](**settings)
        if ckpt_path is not None:
            logger.info("Loading the classifier from %s", ckpt_path)
            self.init_from_ckpt(ckpt_path)

    # ---- data ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def get_x_noisy(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """z_t = √ᾱ_t z + √(1 − ᾱ_t) ε of the diffusion model, for latents ``x`` ``(B, C, h, w)``, t ``(B,)``."""
        noise = default(noise, lambda: torch.randn_like(x))
        return self.diffusion_model.q_sample(x_start=x, t=t, noise=noise)

    def forward(self, x_noisy: torch.Tensor, t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits ``(B, K)`` (class labels) or ``(B, K, h, w)`` (segmentation) of z_t ``(B, C, h, w)`` at t ``(B,)``."""
        return self.model(x_noisy, t)

    @torch.no_grad()
    def get_input(self, batch: dict[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` images ``(B, H, W, C)`` (or ``(B, H, W)``) as contiguous float ``(B, C, H, W)``."""
        x = batch[k]
        x = x[..., None] if x.dim() == 3 else x
        return rearrange(x, "b h w c -> b c h w").contiguous().float()

    @torch.no_grad()
    def get_conditioning(self, batch: dict[str, Any], k: str | None = None) -> torch.Tensor:
        """The labels ``batch[k]`` (default :attr:`label_key`) on this device: ``(B,)`` class ids, or for
        segmentation the ``(B, H, W, K)`` maps as ``(B, K, h, w)`` halved ``numd`` times (nearest)."""
        key = default(k, self.label_key)
        if key is None:
            raise ValueError("get_conditioning needs a label key: pass k or set model.params.label_key.")
        labels = batch[key].to(self.device)
        return self._maps_at_latent_size(labels) if self.label_key == "segmentation" else labels

    def _maps_at_latent_size(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, K)`` maps as ``(B, K, H / 2^numd, W / 2^numd)``, halved by nearest-neighbour steps."""
        maps = rearrange(maps, "b h w k -> b k h w")
        for _ in range(self.numd):
            maps = F.interpolate(maps, scale_factor=0.5, mode="nearest")
        return maps

    # ---- metrics -------------------------------------------------------------------------------------------

    def compute_top_k(self, logits: torch.Tensor, labels: torch.Tensor, k: int, reduction: str = "mean") -> Any:
        """Whether the label is among the k largest logits: logits ``(B, K, ...)``, labels ``(B, ...)``; the hit
        rate as a float (``"mean"``) or the hits ``(B, ...)`` (``"none"``). k is capped at K."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        best = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (B, k, ...)
        hits = (best == labels.unsqueeze(1)).any(dim=1).float()  # (B, ...)
        return hits.mean().item() if reduction == "mean" else hits

    @torch.no_grad()
    def write_logs(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Log ``<train|val>/loss``, ``acc@1``, ``acc@5`` (per step in training, per epoch), the progress-bar
        loss and, in training, the step and learning rate."""
        stage = "train" if self.training else "val"
        values = {"loss": loss.mean(), **{f"acc@{k}": self.compute_top_k(logits, targets, k=k) for k in TOP_K}}
        per_stage = {f"{stage}/{name}": value for name, value in values.items()}
        self.log_dict(per_stage, prog_bar=False, logger=True, on_step=self.training, on_epoch=True)
        self.log("loss", values["loss"], prog_bar=True, logger=False)
        if self.training:
            self._log_progress()

    def _log_progress(self) -> None:
        """The global step (progress bar) and the current learning rate ``lr_abs``, per training step."""
        self.log("global_step", float(self.global_step), logger=False, on_step=True, on_epoch=False, prog_bar=True)
        rate = self.optimizers().param_groups[0]["lr"]
        self.log("lr_abs", rate, logger=True, on_step=True, on_epoch=False, prog_bar=True)

    # ---- training and validation ---------------------------------------------------------------------------

    def _latents_and_targets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The diffusion model's latents z ``(B, C, h, w)`` of the batch and the class ids ``(B,)`` / ``(B, h, w)``
        (one-hot maps reduced by argmax)."""
        encoded = self.diffusion_model.get_input(batch, k=self.diffusion_model.first_stage_key)
        labels = self.get_conditioning(batch)
        latents = encoded[0] if isinstance(encoded, (list, tuple)) else encoded
        return latents, labels.argmax(dim=1) if labels.dim() == 4 else labels

    def _timesteps(self, batch_size: int, t: int | None) -> torch.Tensor:
        """``(B,)`` diffusion steps: uniform over 0..T−1, or all ``t``."""
        if t is not None:
            return torch.full((batch_size,), int(t), dtype=torch.long, device=self.device)
        return torch.randint(self.diffusion_model.num_timesteps, (batch_size,), device=self.device)

    def _classify(self, batch: dict[str, Any], t: int | None = None):
        """(per-sample loss, logits, z_t, targets) at a random t per sample, or at ``t`` for all."""
        latents, labels = self._latents_and_targets(batch)
        steps = self._timesteps(latents.shape[0], t)
        noisy = self.get_x_noisy(latents, steps)
        logits = self(noisy, steps)
        return F.cross_entropy(logits, labels, reduction="none"), logits, noisy, labels

    def shared_step(self, batch: dict[str, Any], t: int | None = None):
        """Cross-entropy of the classifier on z_t (random t, or ``t``), logged; returns (mean loss, logits, z_t,
        targets)."""
        loss, logits, x_noisy, targets = self._classify(batch, t)
        self.write_logs(loss.detach(), logits.detach(), targets.detach())
        return loss.mean(), logits, x_noisy, targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, *_ = self.shared_step(batch)
        return loss

    def on_train_epoch_start(self) -> None:
        """The frozen diffusion UNet is not used in training: keep it on the CPU to save accelerator memory."""
        self.diffusion_model.model.to("cpu")

    def reset_noise_accs(self) -> None:
        """Empty the per-t accuracy lists for t = 0, log_every_t, 2·log_every_t, … < T."""
        steps = range(0, self.diffusion_model.num_timesteps, self.diffusion_model.log_every_t)
        self.noisy_acc = {t: {f"acc@{k}": [] for k in TOP_K} for t in steps}

    def on_validation_start(self) -> None:
        self.reset_noise_accs()

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The logged loss at random t, and top-1/top-5 accuracy at each fixed t of :attr:`noisy_acc`."""
        loss, *_ = self.shared_step(batch)
        for t, accuracies in self.noisy_acc.items():
            _, logits, _, targets = self._classify(batch, t)
            for k in TOP_K:
                accuracies[f"acc@{k}"].append(self.compute_top_k(logits, targets, k=k))
        return loss

    def on_validation_epoch_end(self) -> None:
        """Log the mean accuracy at each fixed t (``val/acc@1_t<t>``, ``val/acc@5_t<t>``)."""
        for t, accuracies in self.noisy_acc.items():
            for name, values in accuracies.items():
                if values:
                    self.log(f"val/{name}_t{t}", sum(values) / len(values), logger=True, on_epoch=True)

    def configure_optimizers(self) -> Any:
        """AdamW(classifier parameters, lr=self.learning_rate, weight_decay); with ``scheduler_config``, a LambdaLR
        on its ``schedule`` every step."""
        lr = getattr(self, "learning_rate", None)
        if lr is None:
            raise AttributeError(
                "NoisyLatentImageClassifier.learning_rate is not set; set it before training "
                "(main.py derives it from model.base_learning_rate)."
            )
        optimizer = adam(torch.optim.AdamW, self.model.parameters(), lr=lr, weight_decay=self.weight_decay)
        if not self.use_scheduler:
            return optimizer
        schedule = instantiate_from_config(self.scheduler_config, name="scheduler_config")
        logger.info("Setting up LambdaLR scheduler...")
        return [optimizer], [{"scheduler": LambdaLR(optimizer, lr_lambda=schedule.schedule), "interval": "step",
                              "frequency": 1}]  # fmt: skip

    # ---- image logs ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def log_images(self, batch: dict[str, Any], N: int = 8, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``inputs`` ``(N, C, H, W)``; class labels drawn as text (``batch["human_label"]``, else the ids), or for
        segmentation the label map and, at ``log_steps`` noise levels, ``inputs@t<t>`` and ``pred@t<t>``."""
        images = self.get_input(batch, self.diffusion_model.first_stage_key)
        labels = self.get_conditioning(batch)
        log = {"inputs": images}
        if self.label_key == "class_label":
            names = batch.get("human_label", [str(int(label)) for label in labels])
            log["labels"] = log_txt_as_img((images.shape[2], images.shape[3]), list(names))
        if ismap(labels):
            log["labels"] = self.diffusion_model.to_rgb(labels)
            log.update(self._noisy_predictions(batch))
        return {key: value[:N] for key, value in log.items()}

    def _noisy_predictions(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """z_t and the predicted segmentation (RGB) at t = 0, T/log_steps, 2T/log_steps, …"""
        shown = {}
        for t in range(0, self.log_steps * self.log_time_interval, self.log_time_interval):
            _, logits, noisy, _ = self._classify(batch, t)
            one_hot = rearrange(F.one_hot(logits.argmax(dim=1), self.num_classes), "b h w k -> b k h w").float()
            shown[f"inputs@t{t}"], shown[f"pred@t{t}"] = noisy, self.diffusion_model.to_rgb(one_hot)
        return shown
