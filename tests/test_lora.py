"""LoRA adapters (peft) on a tiny LatentDiffusion: injection, export, merge, training and the base checkpoint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ldm.checkpoint import save_checkpoint
from ldm.lora import merge_lora, read_lora
from ldm.lora.adapters import LoraSettings, adapter_layers, base_state_dict
from ldm.lora.files import LoraWeights, write_lora
from ldm.util import ConfigError, SettingError
from tests.lora_fixtures import LORA, PLAIN, build, denoiser_output, randomize_adapters, tiny_config

LORA_CONFIG = {"rank": 2, "alpha": 3.0, "text_encoder": True}


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A LoRA model whose adapters are non-zero (as after training)."""
    model = build(tiny_config(LORA, lora_config=LORA_CONFIG))
    randomize_adapters(model)
    return model


def test_fresh_adapters_compute_the_base_model() -> None:
    plain = build(tiny_config(PLAIN))
    adapted = build(tiny_config(LORA, lora_config=LORA_CONFIG))
    # same seed, same construction order: the base weights are the plain model's
    assert torch.equal(denoiser_output(adapted), denoiser_output(plain))
    randomize_adapters(adapted)
    assert not torch.allclose(denoiser_output(adapted), denoiser_output(plain), atol=1e-3)


def test_adapters_sit_on_the_chosen_layers_only(trained: torch.nn.Module) -> None:
    layers = adapter_layers(trained)
    unet = [p for p in layers if p.startswith("model.")]
    text = [p for p in layers if p.startswith("cond_stage_model.")]
    # 3 SpatialTransformers (input, middle, 2 output levels... counted from the model) x 2 attentions x 4 projections
    transformers = sum(type(m).__name__ == "SpatialTransformer" for m in trained.modules())
    assert len(unet) == transformers * 2 * 4
    assert {p.rsplit(".", 1)[-1] for p in unet} == {"to_q", "to_k", "to_v", "0"}
    assert {p.rsplit(".", 1)[-1] for p in text} == {"to_q", "to_k", "to_v", "to_out"}
    assert all(w.rank == 2 and w.alpha == 3.0 for w in layers.values())


def test_export_merge_round_trip(trained: torch.nn.Module, tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    trained.export_lora(path)
    lora = read_lora(path)
    assert lora.metadata["ss_network_dim"] == "2" and lora.metadata["ss_network_alpha"] == "3.0"
    assert lora.metadata["ss_network_module"] == "networks.lora"
    assert len(lora.layers) == len(adapter_layers(trained))

    plain = build(tiny_config(PLAIN), seed=5)
    plain.load_state_dict(base_state_dict(trained), strict=True)
    path_q = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    before = plain.get_submodule(path_q).weight.detach().clone()
    assert merge_lora(plain, lora, multiplier=1.0) == len(lora.layers)

    torch.testing.assert_close(denoiser_output(plain), denoiser_output(trained), atol=1e-5, rtol=0)
    adapter = trained.get_submodule(path_q)
    down, up = adapter.lora_A["default"].weight, adapter.lora_B["default"].weight
    torch.testing.assert_close(plain.get_submodule(path_q).weight, before + 1.5 * up @ down, atol=1e-6, rtol=0)


def test_multiplier_scales_the_update_and_files_add_up(trained: torch.nn.Module, tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    trained.export_lora(path)
    lora = read_lora(path)
    half_twice, whole = build(tiny_config(PLAIN)), build(tiny_config(PLAIN))
    for model in (half_twice, whole):
        model.load_state_dict(base_state_dict(trained))
    merge_lora(half_twice, lora, 0.5)
    merge_lora(half_twice, lora, 0.5)
    merge_lora(whole, lora, 1.0)
    for (name, a), b in zip(half_twice.state_dict().items(), whole.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_merge_reaches_the_ema_copy(trained: torch.nn.Module, tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    trained.export_lora(path)
    model = build(tiny_config(PLAIN, use_ema=True))
    model.load_state_dict(base_state_dict(trained), strict=False)
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_v.weight"
    shadow = getattr(model.model_ema, model.model_ema.m_name2s_name[key])
    before = shadow.clone()
    merge_lora(model, read_lora(path))
    weights = adapter_layers(trained)["model." + key.removesuffix(".weight")]
    torch.testing.assert_close(shadow, before + weights.delta(before.shape), atol=1e-6, rtol=0)


def test_conv_weights_merge_as_a_k_by_k_conv_then_1x1() -> None:
    down, up = torch.randn(2, 3, 3, 3), torch.randn(5, 2, 1, 1)
    weights = LoraWeights(down=down, up=up, alpha=1.0)
    x = torch.randn(1, 3, 6, 6)
    composed = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    merged = torch.nn.functional.conv2d(x, weights.delta(torch.Size([5, 3, 3, 3])) * 2.0, padding=1)
    torch.testing.assert_close(merged, composed, atol=1e-5, rtol=1e-5)


def test_training_steps_change_only_the_adapters() -> None:
    model = build(tiny_config(LORA, lora_config=LORA_CONFIG)).train()
    model.learning_rate = 1e-2
    optimizer = model.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    adapters = {name for name, p in model.named_parameters() if id(p) in optimized}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 8, 8, 4, generator=generator), "caption": ["a red circle", "a blue square"]}
    for _ in range(2):
        optimizer.zero_grad()
        loss, _ = model.shared_step(batch)
        loss.backward()
        optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed)
    assert any(".lora_B." in k and k.startswith("cond_stage_model.") for k in changed)


def test_lightning_state_dict_loads_into_a_fresh_lora_model(trained: torch.nn.Module) -> None:
    fresh = build(tiny_config(LORA, lora_config=LORA_CONFIG), seed=9)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    assert torch.equal(denoiser_output(fresh), denoiser_output(trained))


def test_lora_file_is_written_beside_each_checkpoint(trained: torch.nn.Module, tmp_path) -> None:
    trained._trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(dirpath=str(tmp_path)), is_global_zero=True)
    try:
        trained.on_save_checkpoint({})
    finally:
        trained._trainer = None
    lora = read_lora(tmp_path / "lora.safetensors")
    assert set(lora.layers) == {name for name in lora.layers if name.startswith(("lora_unet_", "lora_te_"))}


def test_base_comes_from_the_checkpoints_ema_weights(tmp_path) -> None:
    source = build(tiny_config(PLAIN, use_ema=True))
    key = "diffusion_model.out.2.weight"
    getattr(source.model_ema, source.model_ema.m_name2s_name[key]).fill_(0.25)
    ckpt = tmp_path / "base.ckpt"
    save_checkpoint(ckpt, source.state_dict())
    from_ema = build(tiny_config(LORA, lora_config=LORA_CONFIG, ckpt_path=str(ckpt)), offsets=False)
    raw = build(tiny_config(LORA, lora_config=LORA_CONFIG, ckpt_path=str(ckpt), ema_base=False), offsets=False)
    assert torch.all(from_ema.model.diffusion_model.out[2].weight == 0.25)
    assert torch.equal(raw.model.diffusion_model.out[2].weight, source.model.diffusion_model.out[2].weight)
    assert from_ema.restarted_from_ckpt


def test_bad_lora_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match="lora_config: unknown key"):
        LoraSettings.from_config({"rnak": 4})
    with pytest.raises(SettingError, match="lora_config.rank"):
        LoraSettings.from_config({"rank": 0})
    with pytest.raises(SettingError, match="1x1 convolution"):
        build(tiny_config(LORA, lora_config={"targets": ["proj_in"]}))


def test_unknown_layers_are_one_clear_error(tmp_path) -> None:
    model = build(tiny_config(PLAIN))
    pair = LoraWeights(down=torch.zeros(1, 4), up=torch.zeros(4, 1), alpha=1.0)
    for name, hint in (("lora_unet_down_blocks_7_attentions_0_proj_in", "another architecture"),
                       ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", "SDXL")):
        path = tmp_path / f"{name}.safetensors"
        write_lora(path, {name: pair})
        with pytest.raises(ValueError, match=hint) as error:
            merge_lora(model, read_lora(path))
        assert "\n" not in str(error.value) and name in str(error.value)


def test_shape_mismatch_is_one_clear_error(tmp_path) -> None:
    model = build(tiny_config(PLAIN))
    path = tmp_path / "wrong.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    write_lora(path, {name: LoraWeights(down=torch.zeros(1, 7), up=torch.zeros(7, 1), alpha=1.0)})
    with pytest.raises(ValueError, match="cannot adapt a weight of shape"):
        merge_lora(model, read_lora(path))


def test_ldm_path_names_load_too(trained: torch.nn.Module, tmp_path) -> None:
    path = tmp_path / "paths.safetensors"
    write_lora(path, adapter_layers(trained))
    plain = build(tiny_config(PLAIN))
    plain.load_state_dict(base_state_dict(trained))
    merge_lora(plain, read_lora(path))
    torch.testing.assert_close(denoiser_output(plain), denoiser_output(trained), atol=1e-5, rtol=0)
