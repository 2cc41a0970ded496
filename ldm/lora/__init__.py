"""LoRA for latent diffusion: peft adapters to train (:mod:`ldm.lora.adapters`), kohya / AUTOMATIC1111
``.safetensors`` files (:mod:`ldm.lora.files`, names in :mod:`ldm.lora.names`) and merging them into a model's
weights with a multiplier each (:mod:`ldm.lora.merge`). See docs/lora.md."""

from ldm.lora.files import LoraFile, LoraSpec, LoraWeights, parse_lora_spec, read_lora, write_lora
from ldm.lora.merge import apply_lora_files, merge_lora, resolve_layers
from ldm.lora.names import lora_names

__all__ = [
    "LoraFile",
    "LoraSpec",
    "LoraWeights",
    "apply_lora_files",
    "lora_names",
    "merge_lora",
    "parse_lora_spec",
    "read_lora",
    "resolve_layers",
    "write_lora",
]
