"""``FixedPromptImageLogger``: the same prompts, sampled from the same starting noise at every log point, so that
successive grids show what training changed and nothing else.

At every ``every_n_steps``-th optimizer step (and before the first one with ``log_at_start``) the model samples
each prompt ``samples_per_prompt`` times with DDIM (``ddim_steps``, η = ``eta``) and classifier-free guidance

    ε̂ = ε(z_t, ∅) + scale · (ε(z_t, c) − ε(z_t, ∅))          (∅: the conditioning of ``negative_prompt``)

from z_T ~ N(0, I) drawn from ``torch.Generator().manual_seed(seed)``, on the EMA weights when the model keeps
them. The grid goes to ``<logdir>/images/fixed_prompts/samples_gs-<step>_e-<epoch>_b-<batch>.png`` (one image per
prompt and sample, prompts in the order given, listed in ``prompts.txt`` beside the grids) and, with a
TensorBoard logger, to ``add_image("fixed_prompts/samples")``; a CSV logger keeps no images, so there the PNG files
are the record.

Only global rank 0 samples and writes under DDP (the other ranks go on to the next step and wait for it in the
gradient all-reduce). Under FSDP, where no rank holds the whole model, every rank samples inside
``summon_full_params`` and rank 0 writes. The training RNG state is left as it was (``torch.random.fork_rng``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_only

from ldm.atomic_write import atomic_file
from ldm.callbacks.image_logger import ImageLogger
from ldm.util import ConfigError

#: Sub-folder of ``<logdir>/images`` (and TensorBoard tag prefix) of the grids.
SPLIT = "fixed_prompts"


def _full_params_scope(trainer: pl.Trainer) -> contextlib.AbstractContextManager:
    """All parameters gathered on every rank when the strategy shards them (FSDP), else nothing to do."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = trainer.strategy.model
    if isinstance(model, FullyShardedDataParallel):
        return FullyShardedDataParallel.summon_full_params(model, writeback=False, recurse=True)
    return contextlib.nullcontext()


def is_sharded(trainer: pl.Trainer) -> bool:
    """Whether the trainer's strategy shards the parameters across ranks (FSDP)."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(getattr(trainer.strategy, "model", None), FullyShardedDataParallel)


class FixedPromptImageLogger(Callback):
    """Sample ``prompts`` with a fixed seed every ``every_n_steps`` optimizer steps and log the grid.

    :param prompts: the captions to sample, one grid cell per prompt and sample.
    :param every_n_steps: log when ``global_step`` (optimizer steps) is a multiple of it.
    :param scale: classifier-free guidance scale (1 = no guidance, no unconditional pass).
    :param ddim_steps: DDIM steps per sample.
    :param seed: seed of the starting noise, the same at every log point.
    :param negative_prompt: the unconditional text of guidance ("" as in training's conditioning dropout).
    :param eta: DDIM η (0: deterministic given the starting noise).
    :param samples_per_prompt: samples of each prompt (each from its own starting noise).
    :param batch_size: prompts sampled at once (memory); the result does not depend on it.
    :param height / width: image size in pixels; None: the model's ``image_size`` latents.
    :param log_at_start: also sample before the first optimizer step (the weights training starts from).
    :param use_ema: sample with the EMA weights when the model keeps them.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        every_n_steps: int = 500,
        scale: float = 7.5,
        ddim_steps: int = 50,
        seed: int = 0,
        negative_prompt: str = "",
        eta: float = 0.0,
        samples_per_prompt: int = 1,
        batch_size: int = 4,
        height: int | None = None,
        width: int | None = None,
        log_at_start: bool = True,
        use_ema: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("FixedPromptImageLogger: 'prompts' must be a non-empty list of strings, e.g. "
                              "prompts: [\"a photo of a cat\", \"a watercolor of a harbour\"].")
        for name, value in (("every_n_steps", every_n_steps), ("ddim_steps", ddim_steps),
                            ("samples_per_prompt", samples_per_prompt), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"FixedPromptImageLogger: '{name}' must be a whole number >= 1, got {value!r}.")
        self.prompts = list(prompts)
        self.every_n_steps, self.scale, self.ddim_steps = every_n_steps, float(scale), ddim_steps
        self.seed, self.negative_prompt, self.eta = seed, negative_prompt, float(eta)
        self.samples_per_prompt, self.batch_size = samples_per_prompt, batch_size
        self.height, self.width = height, width
        self.log_at_start, self.use_ema = log_at_start, use_ema
        self.last_logged_step: int | None = None
        count = len(self.prompts) * samples_per_prompt
        # The PNG and TensorBoard writing of ImageLogger (its file names, atomic writes, [-1, 1] -> [0, 1]).
        self.writer = ImageLogger(batch_frequency=every_n_steps, max_images=count, clamp=True, rescale=True)

    # ---- what is sampled ---------------------------------------------------------------------------------------

    def latent_shape(self, pl_module: pl.LightningModule) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latents: ``height``/``width`` over the first stage's factor, or ``image_size``."""
        from ldm.inference import latent_factor

        factor = latent_factor(pl_module)
        side = pl_module.image_size
        height = self.height // factor if self.height else side
        width = self.width // factor if self.width else side
        return pl_module.channels, height, width

    def starting_noise(self, shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """z_T ``(len(prompts) · samples_per_prompt, C, h, w)`` from the fixed seed, drawn on the CPU (the same
        numbers on every device)."""
        generator = torch.Generator().manual_seed(self.seed)
        count = len(self.prompts) * self.samples_per_prompt
        return torch.randn((count, *shape), generator=generator).to(device)

    def expanded_prompts(self) -> list[str]:
        """Each prompt ``samples_per_prompt`` times, in order: the grid's cells."""
        return [prompt for prompt in self.prompts for _ in range(self.samples_per_prompt)]

    @torch.no_grad()
    def sample(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """The decoded samples ``(N, 3, H, W)`` in [-1, 1] (float32, on the CPU)."""
        from ldm.inference import decode_latents, text_conditioning
        from ldm.models.diffusion.ddim import DDIMSampler

        shape = self.latent_shape(pl_module)
        noise = self.starting_noise(shape, pl_module.device)
        prompts = self.expanded_prompts()
        sampler = DDIMSampler(pl_module)
        images = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            c, uc = text_conditioning(pl_module, chunk, self.negative_prompt, self.scale)
            z, _ = sampler.sample(
                S=self.ddim_steps, batch_size=len(chunk), shape=shape, conditioning=c, verbose=False,
                x_T=noise[start : start + len(chunk)], eta=self.eta, unconditional_guidance_scale=self.scale,
                unconditional_conditioning=uc, disable_progress=True,
            )
            images.append(decode_latents(pl_module, z).clamp(-1.0, 1.0).float().cpu())
        return torch.cat(images)

    @contextlib.contextmanager
    def _sampling_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
        """Eval mode, the training precision, EMA weights when asked, gathered parameters under FSDP; the RNG
        state and the training mode restored afterwards."""
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        was_training = pl_module.training
        ema = pl_module.ema_scope("Fixed-prompt images") if self.use_ema and hasattr(pl_module, "ema_scope") else \
            contextlib.nullcontext()
        with torch.random.fork_rng(devices=devices), _full_params_scope(trainer), ema, \
                trainer.precision_plugin.forward_context():
            pl_module.eval()
            try:
                yield
            finally:
                pl_module.train(was_training)

    # ---- when and where ----------------------------------------------------------------------------------------

    def due(self, global_step: int) -> bool:
        """Whether ``global_step`` is a log point not yet logged (a step spans several batches when gradients
        accumulate)."""
        if global_step == self.last_logged_step:
            return False
        return global_step % self.every_n_steps == 0 and (global_step > 0 or self.log_at_start)

    def log_samples(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> None:
        """Sample (rank 0, or every rank under FSDP) and write the grid (rank 0)."""
        self.last_logged_step = trainer.global_step
        if not (trainer.is_global_zero or is_sharded(trainer)):
            return
        with self._sampling_state(trainer, pl_module):
            images = self.sample(pl_module)
        if not trainer.is_global_zero:
            return
        save_dir = getattr(trainer.logger, "save_dir", None) or trainer.default_root_dir
        self.write_prompts(save_dir)
        samples = {"samples": images}
        self.writer.log_local(save_dir, SPLIT, samples, trainer.global_step, trainer.current_epoch, batch_idx)
        self.writer.log_to_logger(trainer, samples, SPLIT)

    @rank_zero_only
    def write_prompts(self, save_dir: str) -> None:
        """``images/fixed_prompts/prompts.txt``: the grid's cells in order, one prompt a line."""
        root = os.path.join(save_dir, "images", SPLIT)
        os.makedirs(root, exist_ok=True)
        with atomic_file(os.path.join(root, "prompts.txt")) as handle:
            handle.write("\n".join(self.expanded_prompts()).encode("utf-8") + b"\n")

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == 0 and self.due(0):
            self.log_samples(trainer, pl_module, batch_idx)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step > 0 and self.due(trainer.global_step):
            self.log_samples(trainer, pl_module, batch_idx)
