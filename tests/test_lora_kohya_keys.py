"""LoRA layer names against the ones kohya sd-scripts writes and AUTOMATIC1111 reads, on an SD-v1-shaped UNet.

The expectations are written by hand from the diffusers layout of SD v1 (4 levels, 2 res blocks per level,
attention on the first three): down block b, attention j ↔ input_blocks[1 + 3b + j].1; up block b, attention j ↔
output_blocks[3b + j].1 (AUTOMATIC1111's own conversion of these names uses the same arithmetic).
"""

from __future__ import annotations

import argparse

import pytest
import torch

from ldm.lora.files import parse_lora_spec
from ldm.lora.names import text_encoder_name, unet_names
from ldm.modules.diffusionmodules.openaimodel import UNetModel

SD_V1_SHAPED = {
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q":
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
    "input_blocks.2.1.transformer_blocks.0.attn2.to_k":
        "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_k",
    "input_blocks.4.1.proj_in": "lora_unet_down_blocks_1_attentions_0_proj_in",
    "input_blocks.8.1.transformer_blocks.0.ff.net.0.proj":
        "lora_unet_down_blocks_2_attentions_1_transformer_blocks_0_ff_net_0_proj",
    "middle_block.1.transformer_blocks.0.attn1.to_out.0":
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0",
    "output_blocks.3.1.transformer_blocks.0.attn2.to_v":
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v",
    "output_blocks.5.1.transformer_blocks.0.ff.net.2":
        "lora_unet_up_blocks_1_attentions_2_transformer_blocks_0_ff_net_2",
    "output_blocks.11.1.proj_out": "lora_unet_up_blocks_3_attentions_2_proj_out",
    "input_blocks.1.0.in_layers.2": "lora_unet_down_blocks_0_resnets_0_conv1",
    "input_blocks.3.0.op": "lora_unet_down_blocks_0_downsamplers_0_conv",
    "output_blocks.2.1.conv": "lora_unet_up_blocks_0_upsamplers_0_conv",
    "output_blocks.5.2.conv": "lora_unet_up_blocks_1_upsamplers_0_conv",
    "output_blocks.0.0.skip_connection": "lora_unet_up_blocks_0_resnets_0_conv_shortcut",
    "time_embed.0": "lora_unet_time_embedding_linear_1",
}


@pytest.fixture(scope="module")
def sd_v1_shaped_unet() -> UNetModel:
    """SD v1's UNet layout (levels, blocks, attention placement) at 32 channels."""
    with torch.device("meta"):
        return UNetModel(image_size=8, in_channels=4, out_channels=4, model_channels=32,
                         attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8,
                         use_spatial_transformer=True, transformer_depth=1, context_dim=32, legacy=False)


def test_unet_names_are_kohyas(sd_v1_shaped_unet: UNetModel) -> None:
    names = unet_names(sd_v1_shaped_unet, list(SD_V1_SHAPED))
    assert names == SD_V1_SHAPED


def test_every_unet_layer_has_a_distinct_name(sd_v1_shaped_unet: UNetModel) -> None:
    paths = [p for p, m in sd_v1_shaped_unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    names = unet_names(sd_v1_shaped_unet, paths)
    assert len(set(names.values())) == len(paths)
    assert all(name.startswith("lora_unet_") and "." not in name for name in names.values())


@pytest.mark.parametrize(("path", "name"), [
    ("transformer.text_model.encoder.layers.0.self_attn.q_proj",
     "lora_te_text_model_encoder_layers_0_self_attn_q_proj"),
    ("transformer.text_model.encoder.layers.11.mlp.fc2", "lora_te_text_model_encoder_layers_11_mlp_fc2"),
    ("transformer.attn_layers.layers.0.1.to_q", "lora_te_transformer_attn_layers_layers_0_1_to_q"),  # BERTEmbedder
])
def test_text_encoder_names(path: str, name: str) -> None:
    assert text_encoder_name(path) == name


@pytest.mark.parametrize(("text", "path", "weight"), [
    ("style.safetensors", "style.safetensors", 1.0),
    ("style.safetensors:0.8", "style.safetensors", 0.8),
    ("dir/a:b.safetensors:-0.5", "dir/a:b.safetensors", -0.5),
])
def test_lora_spec(text: str, path: str, weight: float) -> None:
    spec = parse_lora_spec(text)
    assert (str(spec.path), spec.weight) == (path, weight)


def test_lora_spec_takes_an_existing_path_with_a_colon_whole(tmp_path) -> None:
    odd = tmp_path / "v1:2.safetensors"
    odd.write_bytes(b"")
    assert parse_lora_spec(str(odd)).path == odd and parse_lora_spec(str(odd)).weight == 1.0


@pytest.mark.parametrize("text", ["style.safetensors:strong", "style.safetensors:nan", ":0.5"])
def test_bad_lora_weight_is_one_line(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as error:
        parse_lora_spec(text)
    assert "\n" not in str(error.value) and "FILE:0.8" in str(error.value)


def test_sampling_flag_reports_a_bad_weight_as_one_line(capsys: pytest.CaptureFixture) -> None:
    from ldm.sampling_cli import sampling_parser

    parser = sampling_parser("t", outdir="out", n_iter=1, n_samples=1, scale=5.0, seed=1)
    opt = parser.parse_args(["--lora", "a.safetensors:0.7", "--lora", "b.safetensors"])
    assert [(str(s.path), s.weight) for s in opt.lora] == [("a.safetensors", 0.7), ("b.safetensors", 1.0)]
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--lora", "a.safetensors:x"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lora" in err and "not a number" in err
