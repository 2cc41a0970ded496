"""CLIP text encoding: ``FrozenCLIPEmbedder.encode`` (tokenizer + ViT-L/14 text tower) against a transformers
``CLIPTextModel`` holding the converted weights, fed by the same tokenizer, for a batch of two prompts (one
guided step's conditional and unconditional text)."""

from __future__ import annotations

import torch

from bench.common import Row, median_times, peak_memory_mb, randomize_
from bench.convert_diffusers import clip_to_diffusers
from ldm.modules.encoders.clip_text import vit_l14_text_config
from ldm.modules.encoders.modules import FrozenCLIPEmbedder

PROMPTS = ["a photograph of an astronaut riding a horse", ""]


def build_pair(seed: int = 2) -> tuple[FrozenCLIPEmbedder, torch.nn.Module]:
    """Our embedder with random weights, and a ``CLIPTextModel`` with the same weights."""
    from transformers import CLIPTextModel

    ours = randomize_(FrozenCLIPEmbedder(), seed)
    theirs = CLIPTextModel(vit_l14_text_config())
    theirs.load_state_dict(clip_to_diffusers(ours.state_dict(), set(theirs.state_dict())), strict=True)
    return ours, theirs.eval()


def run(repeats: int = 5, seed: int = 2) -> list[Row]:
    ours, theirs = build_pair(seed)

    def encode_theirs() -> torch.Tensor:
        ids = ours.tokenizer(PROMPTS, truncation=True, max_length=77, padding="max_length", return_tensors="pt")
        return theirs(input_ids=ids.input_ids).last_hidden_state

    step = {"ours": lambda: ours.encode(PROMPTS), "theirs": encode_theirs}
    with torch.no_grad():
        diff = (step["ours"]() - step["theirs"]()).abs().max().item()
        seconds = median_times(step, repeats)
        mem = {name: peak_memory_mb(fn) for name, fn in step.items()}
    return [Row("CLIP text encoding, 2 prompts", seconds["ours"], seconds["theirs"], mem["ours"], mem["theirs"], diff)]
