"""Every shipped SD 2.x config builds offline and its state dict is the original's, key for key and shape for shape.

Evidence: ``tests/refdata/sd2/manifests/*.tsv``, the full-size models built by the original Stability-AI code
(README there). Our build runs on the meta device, so no weights are allocated; the conditions are the
reference's: no pretrained weights are fetched (every config builds without them), and the unCLIP-L noise
augmentor reads a stub of Karlo's CLIP statistics file from a temporary working directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config
from tests.helpers import state_dict_manifest

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = Path(__file__).parent / "refdata" / "sd2" / "manifests"
CONFIGS = {
    "sd-v2-inference": "v2-inference.yaml",
    "sd-v2-inference-v": "v2-inference-v.yaml",
    "sd-v2-inpainting-inference": "v2-inpainting-inference.yaml",
    "sd-x4-upscaling": "x4-upscaling.yaml",
    "sd-v2-1-stable-unclip-h-inference": "v2-1-stable-unclip-h-inference.yaml",
    "sd-v2-1-stable-unclip-l-inference": "v2-1-stable-unclip-l-inference.yaml",
    "sd-v2-midas-inference": "v2-midas-inference.yaml",
}
INTEL = ["v2-inference-bf16.yaml", "v2-inference-fp32.yaml", "v2-inference-v-bf16.yaml", "v2-inference-v-fp32.yaml"]


def read_manifest(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """``manifests/<name>.tsv`` as ``{key: (shape, dtype)}``."""
    entries = {}
    for line in (MANIFESTS / f"{name}.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        entries[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return entries


def build_on_meta(config_path: Path, workdir: Path, monkeypatch) -> torch.nn.Module:
    """``instantiate_from_config(config.model)`` with no weights allocated, from ``workdir`` (holding the stub
    ``checkpoints/karlo_models/ViT-L-14_stats.th`` of the unCLIP-L config)."""
    stats = workdir / "checkpoints" / "karlo_models" / "ViT-L-14_stats.th"
    stats.parent.mkdir(parents=True, exist_ok=True)
    torch.save((torch.zeros(768), torch.ones(768)), stats)
    monkeypatch.chdir(workdir)
    with torch.device("meta"):
        return instantiate_from_config(OmegaConf.load(config_path).model)


def differences(ours: dict, theirs: dict) -> str:
    missing = sorted(set(theirs) - set(ours))
    unexpected = sorted(set(ours) - set(theirs))
    reshaped = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    return (f"missing {len(missing)} {missing[:5]}, unexpected {len(unexpected)} {unexpected[:5]}, "
            f"differing {len(reshaped)} {[(k, ours[k], theirs[k]) for k in reshaped[:5]]}")


@pytest.mark.parametrize("manifest", sorted(CONFIGS))
def test_config_builds_the_original_state_dict(manifest, tmp_path, monkeypatch):
    model = build_on_meta(ROOT / "configs" / "stable-diffusion" / CONFIGS[manifest], tmp_path, monkeypatch)
    ours, theirs = state_dict_manifest(model), read_manifest(manifest)
    assert ours == theirs, differences(ours, theirs)


@pytest.mark.parametrize("name", INTEL)
def test_intel_configs_build_the_v2_state_dict(name, tmp_path, monkeypatch):
    """The intel/ configs are v2-inference(-v).yaml with other precision settings: the same keys and shapes."""
    model = build_on_meta(ROOT / "configs" / "stable-diffusion" / "intel" / name, tmp_path, monkeypatch)
    ours, theirs = state_dict_manifest(model), read_manifest("sd-v2-inference")
    assert ours == theirs, differences(ours, theirs)


def test_the_shipped_configs_are_the_originals():
    """Configs ship unchanged: the sha256 the reference recorded for each matches the file here."""
    import hashlib
    import json

    summary = json.loads((MANIFESTS / "summary.json").read_text())
    for manifest, name in CONFIGS.items():
        digest = hashlib.sha256((ROOT / "configs" / "stable-diffusion" / name).read_bytes()).hexdigest()
        assert digest == summary[manifest]["config_sha256"], name
