"""Images sampled on the fly for evaluation: which sample gets which seed and condition, and a sampler loop that
turns them into uint8 batches.

Sample ``i`` starts from x_T drawn with its own seed ``seeds[i]`` (a CPU ``torch.Generator``), so a sample does not
depend on the batch it falls in; stochastic samplers also reseed the global generators with the batch's first
seed. Prompts and class labels are assigned cyclically: sample ``i`` gets ``prompts[i % len(prompts)]`` /
``classes[i % len(classes)]`` (50 samples per class for 50,000 samples over 1,000 classes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ldm.cli.validation import require_file
from ldm.inference import decode_latents
from ldm.modules.encoders.modules import ClassEmbedder


def parse_int_list(text: str, what: str) -> list[int]:
    """``"0-49999"`` (inclusive), ``"3,7,9"``, ``"0-9,20"`` or ``"5"`` → the integers; errors name ``what``."""
    values: list[int] = []
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            start, stop = int(low), int(high if dash else low)
            if stop < start or start < 0:
                raise ValueError
            values.extend(range(start, stop + 1))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a list of ranges of non-negative integers like 0-49999 or "
                         "0-9,20") from None
    return values


def read_prompts(path: str | Path, flag: str = "--prompts") -> list[str]:
    """Prompts of a text file (one per non-empty line) or of a COCO captions ``.json`` (``annotations[].caption``,
    in file order)."""
    path = require_file(path, flag, "prompt file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            prompts = [item["caption"].strip() for item in json.loads(text)["annotations"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path} (from {flag}) is not a COCO captions file with annotations[].caption; pass "
                             "that, or a text file with one prompt per line") from None
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} (from {flag}) has no prompts")
    return prompts


@dataclass
class GenerationPlan:
    """Per sample: its seed, and its prompt or class label (None for unconditional models)."""

    seeds: list[int]
    prompts: list[str] | None = None
    classes: list[int] | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def prompts_of(self, start: int, stop: int) -> list[str] | None:
        """The prompts of samples ``start ... stop − 1`` (cycled)."""
        return None if self.prompts is None else [self.prompts[i % len(self.prompts)] for i in range(start, stop)]

    def classes_of(self, start: int, stop: int) -> list[int] | None:
        """The class labels of samples ``start ... stop − 1`` (cycled)."""
        return None if self.classes is None else [self.classes[i % len(self.classes)] for i in range(start, stop)]


@dataclass
class ModelSampling:
    """A latent diffusion model and a named sampler with the settings of one evaluation run: ``steps``, guidance
    ``scale`` (1: no unconditional branch), ``eta``, latent ``shape`` ``(C, h, w)``, the unconditional text
    ``negative_prompt`` and, for class-conditional models, ``null_class`` (the label of the unconditional branch,
    e.g. 1000 for cin256-v2; None asks the conditioner)."""

    model: Any
    sampler: Any
    steps: int
    scale: float
    shape: tuple[int, int, int]
    eta: float | None = None
    negative_prompt: str = ""
    null_class: int | None = None

    def check_plan(self, plan: GenerationPlan) -> None:
        """``ValueError`` naming the flag when the plan's conditions do not fit the model."""
        embedder = getattr(self.model, "cond_stage_model", None)
        if isinstance(embedder, ClassEmbedder):
            count = embedder.embedding.num_embeddings
            if not plan.classes:
                raise ValueError(f"the model is class-conditional ({count} classes): pass --classes, e.g. 0-999")
            if max(plan.classes) >= count:
                raise ValueError(f"--classes goes up to {max(plan.classes)} but the model has {count} classes")
        elif embedder is None:
            if plan.classes or plan.prompts:
                raise ValueError("the model is unconditional: drop --classes / --prompts")
        elif not plan.prompts:
            raise ValueError(f"the model is conditioned by a {type(embedder).__name__}: pass --prompts FILE")

    def conditioning(self, prompts: list[str] | None, classes: list[int] | None, count: int) -> tuple[Any, Any]:
        """``(c, uc)`` of one batch (``uc`` None when ``scale == 1`` or the model is unconditional)."""
        model = self.model
        if classes is not None:
            key = model.cond_stage_model.key
            c = model.get_learned_conditioning({key: torch.tensor(classes, device=model.device)})
            if self.scale == 1.0:
                return c, None
            if self.null_class is not None:
                null = torch.full((count,), self.null_class, device=model.device)
                return c, model.get_learned_conditioning({key: null})
            try:
                return c, model.get_unconditional_conditioning(count)
            except ValueError:
                raise ValueError("guidance (--scale other than 1) of a class-conditional model needs the label of "
                                 "the unconditional branch: pass --null-class (1000 for cin256-v2)") from None
        if prompts is not None:
            uc = None if self.scale == 1.0 else model.get_learned_conditioning(count * [self.negative_prompt])
            return model.get_learned_conditioning(prompts), uc
        return None, None

    @torch.no_grad()
    def generate(self, seeds: Sequence[int], prompts: list[str] | None, classes: list[int] | None) -> torch.Tensor:
        """uint8 images ``(B, 3, H, W)`` of ``B = len(seeds)`` samples: x_T from each seed, decoded
        x = D(z / scale_factor), mapped to [0, 255] by ⌊127.5 · (clamp(x, −1, 1) + 1)⌋ (truncated, as the ADM and
        CompVis sampling scripts save them)."""
        noise = torch.stack([torch.randn(self.shape, generator=torch.Generator().manual_seed(seed))
                             for seed in seeds]).to(self.model.device)
        torch.manual_seed(seeds[0])  # the fresh noise of stochastic samplers
        c, uc = self.conditioning(prompts, classes, len(seeds))
        guidance = {"unconditional_guidance_scale": self.scale, "unconditional_conditioning": uc, "eta": self.eta}
        latents, _ = self.sampler.sample(S=self.steps, batch_size=len(seeds), shape=self.shape, conditioning=c,
                                         verbose=False, x_T=noise, **guidance)
        images = decode_latents(self.model, latents)
        return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8).cpu()


def generated_batches(sampling: ModelSampling, plan: GenerationPlan, batch_size: int) -> Iterator[
        tuple[torch.Tensor, list[str] | None, list[int] | None]]:
    """``(uint8 images (B, 3, H, W), their prompts, their classes)`` for the plan, ``batch_size`` at a time, with a
    progress bar."""
    sampling.check_plan(plan)
    progress = tqdm(total=len(plan), desc="sampling", unit="img")
    for start in range(0, len(plan), batch_size):
        stop = min(start + batch_size, len(plan))
        prompts, classes = plan.prompts_of(start, stop), plan.classes_of(start, stop)
        images = sampling.generate(plan.seeds[start:stop], prompts, classes)
        progress.update(stop - start)
        yield images, prompts, classes
    progress.close()
