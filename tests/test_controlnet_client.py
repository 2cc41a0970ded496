"""A ControlNet-style client (``tests/controlnet_client.py``) against the package: it builds from a config, gets
the locked model's weights the way ControlNet's ``tool_add_control`` does, equals the plain model while its zero
convolutions are zero, trains one step through Lightning with the UNet locked, and round-trips its checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from ldm.checkpoint import load_checkpoint
from ldm.util import instantiate_from_config

UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2],
            num_res_blocks=1, channel_mult=[1, 2], num_heads=2, use_spatial_transformer=True, transformer_depth=1,
            context_dim=32, legacy=False)

LDM_PARAMS = dict(
    linear_start=0.00085, linear_end=0.012, timesteps=100, first_stage_key="image", cond_stage_key="class_label",
    image_size=8, channels=4, cond_stage_trainable=False, conditioning_key="crossattn", scale_factor=0.18215,
    first_stage_config=dict(target="ldm.models.autoencoder.AutoencoderKL", params=dict(
        embed_dim=4, lossconfig=dict(target="torch.nn.Identity"),
        ddconfig=dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                      num_res_blocks=1, attn_resolutions=[], dropout=0.0))),
    cond_stage_config=dict(target="ldm.modules.encoders.modules.ClassEmbedder",
                           params=dict(n_classes=3, embed_dim=32, key="class_label")),
)


def _config(target: str, unet_target: str, **extra) -> dict:
    params = dict(LDM_PARAMS, unet_config=dict(target=unet_target, params=UNET), **extra)
    return OmegaConf.create(dict(target=target, params=params))


def _sd_model() -> torch.nn.Module:
    """The "released" model: random weights, with the UNet's zero-initialised layers made non-zero as training
    would make them (else every prediction is 0)."""
    torch.manual_seed(0)
    model = instantiate_from_config(_config("ldm.models.diffusion.ddpm.LatentDiffusion",
                                            "ldm.modules.diffusionmodules.openaimodel.UNetModel"))
    with torch.no_grad():
        for parameter in model.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _control_model() -> torch.nn.Module:
    torch.manual_seed(1)
    control = dict(target="tests.controlnet_client.ControlNet",
                   params=dict(unet_config=UNET, hint_channels=3, hint_downsample=1))
    return instantiate_from_config(_config("tests.controlnet_client.ControlLDM",
                                           "tests.controlnet_client.ControlledUnetModel",
                                           control_stage_config=control, control_key="hint",
                                           only_mid_control=False))


def _batch(n: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {"image": torch.rand(n, 16, 16, 3, generator=gen) * 2 - 1,
            "hint": torch.rand(n, 16, 16, 3, generator=gen),
            "class_label": torch.tensor([0, 2, 1, 0][:n])}


class _Batches(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in _batch().items()}


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the plain model, a ControlLDM carrying its weights as ``tool_add_control`` makes it), both in eval."""
    from tests.controlnet_client import add_control

    sd, cldm = _sd_model().eval(), _control_model().eval()
    cldm.load_state_dict(add_control(sd.state_dict(), cldm), strict=True)
    return sd, cldm


def test_the_client_gets_the_locked_weights_and_copies_the_encoder(models) -> None:
    sd, cldm = models
    sd_state, cldm_state = sd.state_dict(), cldm.state_dict()
    assert set(sd_state) <= set(cldm_state)
    for key, value in sd_state.items():
        assert torch.equal(cldm_state[key], value), key
    copied = [key for key in cldm_state if key.startswith("control_model.")
              and "model.diffusion_model." + key[len("control_model."):] in sd_state]
    assert any(".input_blocks." in key for key in copied) and any(".middle_block." in key for key in copied)
    assert any(key.startswith("control_model.time_embed.") for key in copied)
    for key in copied:
        assert torch.equal(cldm_state[key], sd_state["model.diffusion_model." + key[len("control_model."):]])


def test_zero_convolutions_leave_the_plain_model_unchanged(models) -> None:
    """With every zero convolution still zero, the controlled UNet (its forward rebuilt from the public blocks)
    gives the plain model's prediction: the rebuilt forward is the UNet's forward."""
    sd, cldm = models
    with torch.no_grad():
        z, c = sd.get_input(_batch(), "image")
        _, cond = cldm.get_input(_batch(), "image")
        t = torch.tensor([5, 80])
        noisy = sd.q_sample(z, t, noise=torch.randn_like(z))
        residuals = cldm.control_model(x=noisy, hint=cond["c_concat"][0], timesteps=t, context=c)
        assert len(residuals) == len(cldm.model.diffusion_model.input_blocks) + 1
        assert all(torch.count_nonzero(r) == 0 for r in residuals)
        torch.testing.assert_close(cldm.apply_model(noisy, t, cond), sd.apply_model(noisy, t, c),
                                   atol=1e-5, rtol=1e-5)


def test_fractional_timesteps_reach_the_rebuilt_forward(models) -> None:
    """k-diffusion's CompVisDenoiser hands interpolated (float) timesteps to ``apply_model``; the time embedding
    is continuous in t."""
    sd, cldm = models
    with torch.no_grad():
        z, c = sd.get_input(_batch(), "image")
        _, cond = cldm.get_input(_batch(), "image")
        t = torch.tensor([40.0, 40.0])
        base = cldm.apply_model(z, t, cond)
        near = cldm.apply_model(z, t + 1e-3, cond)
        frac = cldm.apply_model(z, t + 0.5, cond)
    assert 0 < (near - base).abs().max() < 1e-2
    assert (frac - base).abs().max() > (near - base).abs().max()


def test_one_lightning_step_trains_only_the_control_model_and_the_checkpoint_round_trips(
        models, tmp_path: Path) -> None:
    from tests.controlnet_client import add_control

    sd, _ = models
    cldm = _control_model()
    cldm.load_state_dict(add_control(sd.state_dict(), cldm), strict=True)
    cldm.learning_rate = 1e-3
    before = {key: value.clone() for key, value in cldm.state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(cldm, DataLoader(_Batches(), batch_size=2))
    after = cldm.state_dict()
    changed = {key for key in after if not torch.equal(after[key], before[key])}
    assert changed and all(key.startswith("control_model.") or key.startswith("model_ema.") for key in changed)
    assert any(key.startswith("control_model.zero_convs.") for key in changed)
    assert not any(key.startswith("model.diffusion_model.") for key in changed)

    path = tmp_path / "control.ckpt"
    trainer.save_checkpoint(path)
    reloaded = _control_model().eval()
    reloaded.load_state_dict(load_checkpoint(path)["state_dict"], strict=True)
    cldm.eval()
    with torch.no_grad():
        z, cond = cldm.get_input(_batch(), "image")
        t = torch.tensor([10, 60])
        trained = cldm.apply_model(z, t, cond)
        assert torch.equal(reloaded.apply_model(z, t, cond), trained)
        assert not torch.allclose(trained, sd.apply_model(z, t, cond["c_crossattn"][0]), atol=1e-7)
