"""DDPM / LatentDiffusion / DiffusionWrapper.

Against the original code's data: schedules, the tiny LatentDiffusion's outputs, full-size key manifests and the
extra keys of real checkpoints. Without reference: loss targets and norms, the learned log-variance gradient,
std rescaling, EMA swapping, a short Lightning fit, and the ancestral sampler on Gaussian data, whose optimal
noise predictor is known in closed form.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from ldm.models.diffusion import ddpm, image_logging
from ldm.models.diffusion.ddpm import DDPM, DiffusionWrapper, LatentDiffusion
from ldm.models.diffusion.schedule import PERSISTENT_BUFFERS
from ldm.util import ConfigError, instantiate_from_config
from tests.fakes import EchoUNet, GaussianOptimum, RecordingUNet, ScaleUNet, make_ddpm, make_pixel_ldm, unet
from tests.helpers import REFDATA, load_manifest, state_dict_manifest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY_CONFIG = REFDATA / "configs" / "ldm_tiny.yaml"
SCHEDULES = torch.load(REFDATA / "vectors" / "schedules.pt", weights_only=True)


def tiny_config(**params):
    config = OmegaConf.load(TINY_CONFIG).model
    for key, value in params.items():
        config.params[key] = value
    return config


@pytest.fixture(autouse=True)
def single_thread():
    """These tests loop over small tensors, where a second thread only adds synchronisation (on a busy
    2-core machine a 1000-step chain took 30 s with 2 threads, 1 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Equal up to ``rtol`` relative to the largest reference value (refdata/README.md tolerances)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


# --------------------------------------------------------------------------------------------------------
# Schedules: the original's buffers, persistence and dtypes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_register_schedule_reproduces_the_original(name):
    ref = SCHEDULES[name]
    model = make_ddpm(parameterization=name.split("/")[0], **ref["kwargs"])
    assert sorted(model.state_dict()) == sorted(ref["persistent_buffer_names"]) == sorted(PERSISTENT_BUFFERS)
    assert "lvlb_weights" not in model.state_dict()
    for buffer in [*PERSISTENT_BUFFERS, "lvlb_weights"]:
        value = getattr(model, buffer)
        assert value.dtype == torch.float32, buffer
        torch.testing.assert_close(value, ref[buffer], rtol=1e-6, atol=0, msg=buffer)
    assert model.num_timesteps == ref["kwargs"]["timesteps"]


def test_constructor_errors_name_the_setting():
    with pytest.raises(ConfigError, match="parameterization .velocity."):
        make_ddpm(parameterization="velocity")
    with pytest.raises(ConfigError, match="loss_type 'huber'"):
        make_ddpm(loss_type="huber")
    with pytest.raises(ConfigError, match="conditioning_key 'film'"):
        make_ddpm(conditioning_key="film")
    with pytest.raises(ConfigError, match="num_timesteps_cond"):
        make_pixel_ldm(num_timesteps_cond=20, timesteps=10)


def test_constructor_errors_keep_the_original_exception_types():
    """Code written against the original catches AssertionError (its asserts) and NotImplementedError."""
    with pytest.raises(AssertionError, match="parameterization"):
        make_ddpm(parameterization="velocity")
    with pytest.raises(AssertionError, match="conditioning_key"):
        make_ddpm(conditioning_key="film")
    with pytest.raises(AssertionError, match="num_timesteps_cond"):
        make_pixel_ldm(num_timesteps_cond=20, timesteps=10)
    with pytest.raises(AssertionError, match="scale_factor"):
        make_pixel_ldm(scale_by_std=True, scale_factor=0.5).on_train_batch_start({"image": torch.ones(1, 2, 2, 3)}, 0)
    with pytest.raises(NotImplementedError, match="loss_type 'huber'"):
        make_ddpm(loss_type="huber")
    unknown_forward = make_pixel_ldm(cond_stage_forward="embed")
    unknown_forward.cond_stage_model = nn.Identity()
    with pytest.raises(AssertionError, match="cond_stage_forward = 'embed'"):
        unknown_forward.get_learned_conditioning(torch.zeros(1))
    with pytest.raises(AssertionError, match="a mask needs x0"):
        make_pixel_ldm(timesteps=5).p_sample_loop(None, (1, 3, 2, 2), mask=torch.ones(1, 1, 2, 2), verbose=False)
    model = make_ddpm()
    model.loss_type = "huber"
    with pytest.raises(NotImplementedError, match="huber"):
        model.get_loss(torch.zeros(2), torch.ones(2))


# --------------------------------------------------------------------------------------------------------
# The tiny LatentDiffusion against the original's outputs
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ref() -> dict:
    return torch.load(REFDATA / "vectors" / "ldm_tiny.pt", weights_only=True)["latent_diffusion"]


@pytest.fixture(scope="module")
def tiny(tiny_ref) -> LatentDiffusion:
    model = instantiate_from_config(tiny_config())
    model.load_state_dict(tiny_ref["state_dict"], strict=True)
    return model.eval()


def test_tiny_state_dict_is_the_originals(tiny, tiny_ref):
    assert len(tiny.state_dict()) == len(tiny_ref["state_dict"]) == 879
    assert state_dict_manifest(tiny).keys() == tiny_ref["state_dict"].keys()


@torch.no_grad()
def test_tiny_conditioning_and_first_stage(tiny, tiny_ref):
    inputs, outputs = tiny_ref["inputs"], tiny_ref["outputs"]
    assert_close_rel(tiny.get_learned_conditioning({"class_label": inputs["class_label"]}), outputs["c"])
    assert_close_rel(tiny.get_learned_conditioning({"class_label": inputs["uc_class_label"]}), outputs["uc"])
    posterior = tiny.encode_first_stage(inputs["image"])
    assert_close_rel(posterior.mean, outputs["encode_first_stage_mean"])
    assert_close_rel(posterior.logvar, outputs["encode_first_stage_logvar"])
    torch.manual_seed(4321)
    sampled = tiny.get_first_stage_encoding(posterior)
    assert_close_rel(sampled, outputs["get_first_stage_encoding_sampled_seed4321"])
    z = tiny.get_first_stage_encoding(posterior.mode())
    assert_close_rel(z, outputs["get_first_stage_encoding_of_mode"])
    assert_close_rel(tiny.decode_first_stage(z), outputs["decode_first_stage_of_mode"])


@torch.no_grad()
def test_tiny_q_sample_and_apply_model(tiny, tiny_ref):
    inputs, outputs = tiny_ref["inputs"], tiny_ref["outputs"]
    x_start = outputs["get_first_stage_encoding_of_mode"]
    x_noisy = tiny.q_sample(x_start, inputs["t"], inputs["noise"])
    assert_close_rel(x_noisy, outputs["q_sample"])
    assert_close_rel(tiny.apply_model(outputs["q_sample"], inputs["t"], outputs["c"]), outputs["apply_model"])


@torch.no_grad()
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_tiny_p_losses(tiny, tiny_ref, mode):
    inputs, outputs = tiny_ref["inputs"], tiny_ref["outputs"]
    tiny.train(mode == "train")
    try:
        loss, loss_dict = tiny.p_losses(
            outputs["get_first_stage_encoding_of_mode"], outputs["c"], inputs["t"], noise=inputs["noise"]
        )
    finally:
        tiny.eval()
    expected = outputs[f"p_losses_{mode}_loss_dict"]
    assert loss_dict.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loss_dict[key], value, rtol=1e-4, atol=0)
    torch.testing.assert_close(loss, outputs[f"p_losses_{mode}_loss"], rtol=1e-4, atol=0)


def test_the_first_stage_is_frozen(tiny):
    tiny.train()
    try:
        assert not tiny.first_stage_model.training and not tiny.cond_stage_model.training
        assert tiny.model.training
    finally:
        tiny.eval()
    assert not any(p.requires_grad for p in tiny.first_stage_model.parameters())
    assert not any(p.requires_grad for p in tiny.cond_stage_model.parameters())


def test_vq_first_stage_decoding_paths():
    """VQ first stage: latents are quantized on decode unless ``force_not_quantize``; ``predict_cids`` reads
    codebook logits (argmax over channels) or indices."""
    ddconfig = {
        "double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
        "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    first_stage = {
        "target": "ldm.models.autoencoder.VQModelInterface",
        "params": {"embed_dim": 3, "n_embed": 5, "ddconfig": ddconfig, "lossconfig": {"target": "torch.nn.Identity"}},
    }
    torch.manual_seed(0)
    model = LatentDiffusion(
        first_stage_config=first_stage,
        cond_stage_config="__is_unconditional__",
        unet_config=unet(EchoUNet),
        use_ema=False,
        scale_factor=0.5,
    )
    vq = model.first_stage_model
    assert model.num_downs == 1
    z = model.get_first_stage_encoding(model.encode_first_stage(torch.randn(2, 3, 16, 16)))
    assert z.shape == (2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.decode_first_stage(z), vq.decoder(vq.post_quant_conv(vq.quantize(z / 0.5)[0])))
        unquantized = vq.decoder(vq.post_quant_conv(z / 0.5))
        torch.testing.assert_close(model.decode_first_stage(z, force_not_quantize=True), unquantized)
        indices = torch.randint(0, 5, (2, 8, 8))
        codes = torch.nn.functional.one_hot(indices, 5).permute(0, 3, 1, 2).float() * 10
        entries = vq.quantize.embedding(indices).permute(0, 3, 1, 2)
        expected = vq.decoder(vq.post_quant_conv(entries / 0.5))
        torch.testing.assert_close(model.decode_first_stage(codes, predict_cids=True), expected)
        torch.testing.assert_close(model.decode_first_stage(indices, predict_cids=True), expected)


# --------------------------------------------------------------------------------------------------------
# Full-size configs: key manifests (built on the meta device, no memory, no checkpoints)
# --------------------------------------------------------------------------------------------------------


def config_without_checkpoints(path: Path):
    """The config's model node with the first stage's ``ckpt_path`` set to null: the released weights are not
    needed to check the architecture (with them missing, building raises FileNotFoundError, tested below)."""
    config = OmegaConf.load(path).model
    config.params.first_stage_config.params.ckpt_path = None
    return config


def build_on_meta(config) -> nn.Module:
    with torch.device("meta"):
        return instantiate_from_config(config)


@pytest.mark.parametrize(
    ("config", "manifest"),
    [
        (CONFIGS / "stable-diffusion" / "v1-inference.yaml", "sd-v1.tsv"),
        (CONFIGS / "latent-diffusion" / "cin256-v2.yaml", "ldm-cin256-v2.tsv"),
    ],
)
def test_full_size_configs_give_the_original_state_dict(config, manifest):
    model = build_on_meta(config_without_checkpoints(config))
    assert state_dict_manifest(model) == load_manifest(manifest)


def test_tiny_with_ema_gives_the_original_ema_keys():
    model = build_on_meta(tiny_config(use_ema=True))
    assert state_dict_manifest(model) == load_manifest("ldm-tiny-use-ema.tsv")


@pytest.mark.parametrize(
    "name",
    [
        "cin-ldm-vq-f8",
        "lsun_churches-ldm-kl-8",
        "lsun_bedrooms-ldm-vq-4",
        "ffhq-ldm-vq-4",
        "celebahq-ldm-vq-4",
        "txt2img-1p4B-eval",
    ],
)
def test_latent_diffusion_configs_build(name):
    config = config_without_checkpoints(CONFIGS / "latent-diffusion" / f"{name}.yaml")
    model = build_on_meta(config)
    assert isinstance(model, LatentDiffusion)
    assert any(k.startswith("model.diffusion_model.") for k in model.state_dict())


@pytest.mark.parametrize("name", ["cin-ldm-vq-f8", "lsun_bedrooms-ldm-vq-4", "ffhq-ldm-vq-4"])
def test_fixed_first_stage_paths_point_at_released_checkpoints(name):
    config = OmegaConf.load(CONFIGS / "latent-diffusion" / f"{name}.yaml").model
    path = config.params.first_stage_config.params.ckpt_path
    assert path.startswith("models/first_stage_models/vq-f") and path.endswith("/model.ckpt")


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------


def test_checkpoint_with_real_checkpoint_extras_loads(tmp_path, tiny_ref):
    """A Lightning checkpoint with LitEma bookkeeping and CLIP position_ids loads into a use_ema=False model."""
    state_dict = dict(tiny_ref["state_dict"])
    state_dict["model_ema.decay"] = torch.tensor(0.9999)
    state_dict["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    state_dict["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state_dict, "global_step": 1234}, path)
    model = instantiate_from_config(tiny_config(ckpt_path=str(path)))
    assert model.restarted_from_ckpt
    loaded = model.state_dict()
    assert loaded.keys() == tiny_ref["state_dict"].keys()
    for key, value in tiny_ref["state_dict"].items():
        torch.testing.assert_close(loaded[key], value.to(loaded[key].dtype), rtol=0, atol=0, msg=key)


def test_missing_checkpoints_name_the_config_key(tmp_path):
    missing = str(tmp_path / "nowhere.ckpt")
    with pytest.raises(FileNotFoundError, match=r"model\.params\.ckpt_path"):
        instantiate_from_config(tiny_config(ckpt_path=missing))
    config = tiny_config()
    config.params.first_stage_config.params.ckpt_path = missing
    with pytest.raises(FileNotFoundError, match=r"first_stage_config\.params\.ckpt_path.*nowhere\.ckpt"):
        instantiate_from_config(config)


# --------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameterization", ["eps", "x0"])
@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_p_losses_targets_norms_and_weights(parameterization, loss_type):
    """With the echo UNet the prediction is x_t itself, so the loss is a closed form of x_0, ε and t."""
    model = make_ddpm(
        parameterization=parameterization, loss_type=loss_type, original_elbo_weight=0.5, l_simple_weight=2.0
    )
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 2, 4, 4, generator=generator)
    t = torch.tensor([0, 500, 999])
    ab = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    error = x_t - (noise if parameterization == "eps" else x0)
    per_sample = (error.abs() if loss_type == "l1" else error**2).mean(dim=(1, 2, 3))
    expected = 2.0 * per_sample.mean() + 0.5 * (model.lvlb_weights[t] * per_sample).mean()

    loss, loss_dict = model.p_losses(x0, t, noise=noise)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss_dict["train/loss_simple"], per_sample.mean())
    torch.testing.assert_close(loss_dict["train/loss_vlb"], (model.lvlb_weights[t] * per_sample).mean())
    model.eval()
    assert set(model.p_losses(x0, t, noise=noise)[1]) == {"val/loss_simple", "val/loss_vlb", "val/loss"}


def test_learned_logvar_gets_the_gradient_of_its_timesteps():
    """loss = mean_i(L_i e^{−γ_{t_i}} + γ_{t_i}) ⇒ ∂loss/∂γ_k = Σ_{i: t_i = k} (1 − L_i e^{−γ_k}) / B."""
    model = make_pixel_ldm(learn_logvar=True, logvar_init=0.5)
    generator = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 3, 1, 4, 4, generator=generator)
    t = torch.tensor([3, 3, 700])
    loss, loss_dict = model.p_losses(x0, None, t, noise=noise)
    loss.backward()

    ab = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    per_sample = ((ab.sqrt() * x0 + (1 - ab).sqrt() * noise - noise) ** 2).mean(dim=(1, 2, 3))
    weighted = 1 - per_sample * math.exp(-0.5)
    expected = torch.zeros(model.num_timesteps)
    expected[3] = (weighted[0] + weighted[1]) / 3
    expected[700] = weighted[2] / 3
    torch.testing.assert_close(model.logvar.grad, expected)
    torch.testing.assert_close(loss_dict["train/loss_gamma"], (per_sample * math.exp(-0.5) + 0.5).mean())
    assert loss_dict["logvar"].item() == pytest.approx(0.5)
    model.learning_rate = 1e-3
    assert any(p is model.logvar for p in model.configure_optimizers().param_groups[0]["params"])


WARM_UP = {
    "target": "ldm.lr_scheduler.LambdaLinearScheduler",
    "params": {"warm_up_steps": [10], "cycle_lengths": [10**13], "f_start": [1e-6], "f_max": [1.0], "f_min": [1.0]},
}


def test_optimizer_and_warm_up_schedule():
    model = make_pixel_ldm(
        scheduler_config=WARM_UP,
        unet_config={"target": "torch.nn.Linear", "params": {"in_features": 2, "out_features": 2}},
    )
    model.learning_rate = 0.1
    optimizers, schedulers = model.configure_optimizers()
    (opt,), (scheduler,) = optimizers, schedulers
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 0.1
    assert [p.shape for p in opt.param_groups[0]["params"]] == [(2, 2), (2,)]
    assert scheduler["interval"] == "step" and scheduler["frequency"] == 1
    lr_scheduler = scheduler["scheduler"]
    for _ in range(5):
        opt.step()
        lr_scheduler.step()
    # linear warm-up from f_start to f_max over 10 steps: f(5) = 1e-6 + (1 − 1e-6) · 5/10
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * (1e-6 + (1 - 1e-6) * 0.5))


def test_optimizer_is_fused_adamw_equal_to_the_per_tensor_loop():
    model = make_pixel_ldm(unet_config={"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 3}})
    model.learning_rate = 1e-2
    opt = model.configure_optimizers()
    reference_params = [p.detach().clone().requires_grad_() for p in opt.param_groups[0]["params"]]
    reference = torch.optim.AdamW(reference_params, lr=1e-2, foreach=False)
    assert opt.defaults["fused"] is True
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(opt.param_groups[0]["params"], reference_params):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        opt.step()
        reference.step()
    for p, q in zip(opt.param_groups[0]["params"], reference_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_trainable_conditioner_is_optimized_and_encoded_in_forward():
    model = LatentDiffusion(
        first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"},
        cond_stage_config={
            "target": "ldm.modules.encoders.modules.ClassEmbedder",
            "params": {"embed_dim": 8, "n_classes": 3, "key": "class_label"},
        },
        cond_stage_key="class_label",
        cond_stage_trainable=True,
        conditioning_key="crossattn",
        unet_config=unet(RecordingUNet),
        use_ema=False,
    )
    assert model.cond_stage_model.training and model.cond_stage_model.embedding.weight.requires_grad
    model.learning_rate = 1e-3
    params = model.configure_optimizers().param_groups[0]["params"]
    assert any(p is model.cond_stage_model.embedding.weight for p in params)
    batch = {"image": torch.zeros(2, 4, 4, 1), "class_label": torch.tensor([0, 2])}
    z, c = model.get_input(batch, "image")
    assert c is batch  # raw: encoded in forward, with gradients
    model.shared_step(batch)
    context = model.model.diffusion_model.seen["context"]
    torch.testing.assert_close(context, model.cond_stage_model.embedding.weight[[0, 2]][:, None])
    assert context.requires_grad


# --------------------------------------------------------------------------------------------------------
# Conditioning, std rescaling, EMA
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, {"x"}),
        ("concat", {"x"}),
        ("crossattn", {"x", "context"}),
        ("hybrid", {"x", "context"}),
        ("adm", {"x", "y"}),
    ],
)
def test_diffusion_wrapper_routes_the_conditioning(key, expected):
    wrapper = DiffusionWrapper(unet(RecordingUNet), key)
    x, t = torch.zeros(2, 4, 8, 8), torch.tensor([1, 2])
    concat, context = torch.ones(2, 3, 8, 8), torch.ones(2, 5, 16)
    wrapper(x, t, c_concat=[concat], c_crossattn=[context, context] if key != "adm" else [context[:, 0]])
    seen = wrapper.diffusion_model.seen
    assert set(seen) - {"t"} == expected
    channels = {"concat": 7, "hybrid": 7}.get(key, 4)
    assert seen["x"].shape[1] == channels
    if "context" in expected:
        assert seen["context"].shape == (2, 10, 16)


def test_scale_by_std_sets_one_over_the_std_of_the_first_latents():
    model = make_pixel_ldm(scale_by_std=True)
    image = torch.randn(4, 8, 8, 3, generator=torch.Generator().manual_seed(2)) * 3.0 + 1.0
    model.on_train_batch_start({"image": image}, 0, 0)  # the original (Lightning 1) hook also took dataloader_idx
    assert "scale_factor" in model.state_dict()
    torch.testing.assert_close(model.scale_factor, 1.0 / image.flatten().std())
    model.on_train_batch_start({"image": image * 10}, 1)
    torch.testing.assert_close(model.scale_factor, 1.0 / image.flatten().std())
    with pytest.raises(ConfigError, match="scale_factor"):
        make_pixel_ldm(scale_by_std=True, scale_factor=0.18215).on_train_batch_start({"image": image}, 0)


def test_ema_scope_swaps_ema_weights_in_and_restores_them():
    model = DDPM(unet_config={"target": "torch.nn.Linear", "params": {"in_features": 3, "out_features": 3}})
    weight = model.model.diffusion_model.weight
    initial = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    model.on_train_batch_end(None, None, 0)
    # first update: decay = min(0.9999, (1 + 1)/(10 + 1)), ema ← ema − (1 − decay)(ema − w)
    ema = initial - (1 - 2 / 11) * (initial - weight.detach())
    trained = weight.detach().clone()
    with model.ema_scope("test"):
        torch.testing.assert_close(model.model.diffusion_model.weight, ema)
    torch.testing.assert_close(model.model.diffusion_model.weight, trained)


def test_validation_step_logs_the_training_and_the_ema_weights(monkeypatch):
    """Training weights s = 0 (ε̂ = 0), EMA weights s = 1 (ε̂ = x_t): each pass's loss follows from its own draws."""
    model = make_ddpm(use_ema=True, unet_config=unet(ScaleUNet)).eval()
    with torch.no_grad():
        model.model.diffusion_model.scale.fill_(0.0)
    logged = {}
    monkeypatch.setattr(model, "log_dict", lambda values, **kwargs: logged.update(values))
    batch = {"image": torch.randn(4, 4, 4, 3, generator=torch.Generator().manual_seed(5))}
    torch.manual_seed(0)
    model.validation_step(batch, 0)

    x = model.get_input(batch, "image")
    torch.manual_seed(0)
    _, noise = torch.randint(0, 1000, (4,)), torch.randn_like(x)
    t_ema, noise_ema = torch.randint(0, 1000, (4,)), torch.randn_like(x)
    assert set(logged) == {f"val/{k}{s}" for k in ("loss_simple", "loss_vlb", "loss") for s in ("", "_ema")}
    torch.testing.assert_close(logged["val/loss_simple"], (noise**2).mean())
    x_t = model.q_sample(x, t_ema, noise_ema)
    torch.testing.assert_close(logged["val/loss_simple_ema"], ((x_t - noise_ema) ** 2).mean())
    assert model.model.diffusion_model.scale.item() == 0.0


def test_ucg_training_drops_the_conditioning_in_training_steps(monkeypatch):
    model = make_pixel_ldm(ucg_training={"class_label": {"p": 1.0, "val": 10}})
    seen = []
    monkeypatch.setattr(model, "shared_step", lambda batch: (seen.append(batch), (torch.tensor(0.0), {}))[1])
    batch = {"image": torch.zeros(3, 4, 4, 3), "class_label": torch.tensor([1, 2, 3])}
    model.training_step(batch, 0)
    assert seen[0]["class_label"].tolist() == [10, 10, 10]
    assert batch["class_label"].tolist() == [1, 2, 3]
    assert make_pixel_ldm().ucg_training == {}


# --------------------------------------------------------------------------------------------------------
# Training with Lightning
# --------------------------------------------------------------------------------------------------------


def test_short_fit_trains_the_unet_only_and_updates_the_ema():
    torch.manual_seed(0)
    model = instantiate_from_config(tiny_config(use_ema=True, scheduler_config=WARM_UP))
    model.learning_rate = 1e-3
    frozen = {f"first_stage_model.{k}": v.clone() for k, v in model.first_stage_model.state_dict().items()}
    frozen |= {f"cond_stage_model.{k}": v.clone() for k, v in model.cond_stage_model.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in model.model_ema.state_dict().items() if k not in ("decay", "num_updates")}
    images = torch.rand(4, 32, 32, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    data = [{"image": images[i], "class_label": i} for i in range(4)]
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=2))

    assert trainer.global_step == 2
    assert trainer.callback_metrics["lr_abs"].item() == pytest.approx(1e-3 * (1e-6 + (1 - 1e-6) * 0.1))
    assert {"train/loss_simple_step", "train/loss_vlb_step", "train/loss_step", "global_step"} <= set(
        trainer.callback_metrics
    )
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not model.first_stage_model.training
    changed = [k for k, v in model.model.state_dict().items() if not torch.equal(v, unet_before[k])]
    assert len(changed) > len(unet_before) // 2
    assert model.model_ema.num_updates.item() == 2
    ema_after = model.model_ema.state_dict()
    assert any(not torch.equal(ema_after[k], v) for k, v in ema_before.items())


# --------------------------------------------------------------------------------------------------------
# The ancestral sampler on Gaussian data
# --------------------------------------------------------------------------------------------------------


def chain_law(model: DDPM, mu: float, sigma: float) -> tuple[float, float]:
    """Exact mean and std of the sampler's output with ε = ε*, in float64.

    Every step is affine in x_t: x_{t−1} = A_t x_t + B_t + s_t z with x̂_0 = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε*,
    A_t x_t + B_t = c1_t x̂_0 + c2_t x_t and s_t² = exp(log β̃_t) (0 at t = 0). From x_T ~ N(0, 1):
    m ← A m + B, v ← A² v + s².
    """
    b = {k: getattr(model, k).double().numpy() for k in PERSISTENT_BUFFERS}
    mean, var = 0.0, 1.0
    for t in reversed(range(model.num_timesteps)):
        ab = b["alphas_cumprod"][t]
        k = np.sqrt(1 - ab) / (ab * sigma**2 + 1 - ab)
        a_x0 = b["sqrt_recip_alphas_cumprod"][t] - b["sqrt_recipm1_alphas_cumprod"][t] * k
        b_x0 = b["sqrt_recipm1_alphas_cumprod"][t] * k * np.sqrt(ab) * mu
        a = b["posterior_mean_coef1"][t] * a_x0 + b["posterior_mean_coef2"][t]
        noise_var = np.exp(b["posterior_log_variance_clipped"][t]) if t > 0 else 0.0
        mean, var = a * mean + b["posterior_mean_coef1"][t] * b_x0, a * a * var + noise_var
    return mean, math.sqrt(var)


@pytest.mark.parametrize("kind", ["DDPM", "LatentDiffusion"])
def test_ancestral_sampler_turns_noise_into_the_gaussian_data(kind):
    """1000 ancestral steps with the optimal ε* for x_0 ~ N(μ = 0.5, σ² = 0.25).

    Tolerances: n = 65 536 independent scalars, so the sample mean has standard error σ/√n ≈ 0.002 and the
    sample std σ/√(2n) ≈ 0.0014; we allow 5 standard errors around the chain's exact law (``chain_law``). That
    law is not exactly the data's, since each reverse step uses the fixed variance β̃_t instead of the true
    posterior's: for this schedule its std is 0.45 % low and its mean 1e-4 off, so against the data law we add
    1 % of σ (std) and 1e-3 (mean) to the statistical tolerance.
    """
    mu, sigma, shape = 0.5, 0.5, (256, 1, 16, 16)
    if kind == "DDPM":
        model = make_ddpm(clip_denoised=False, log_every_t=1000)
    else:
        model = make_pixel_ldm(log_every_t=1000)
    model.model.diffusion_model = GaussianOptimum(mu, sigma, model.alphas_cumprod, "eps")
    torch.manual_seed(0)
    if kind == "DDPM":
        samples = model.p_sample_loop(shape)
    else:
        samples = model.p_sample_loop(None, shape, verbose=False)
    n = samples.numel()
    se_mean, se_std = sigma / math.sqrt(n), sigma / math.sqrt(2 * n)

    exact_mean, exact_std = chain_law(model, mu, sigma)
    assert abs(exact_mean - mu) < 1e-3 and abs(exact_std - sigma) < 0.01 * sigma
    assert abs(samples.mean().item() - exact_mean) < 5 * se_mean
    assert abs(samples.std().item() - exact_std) < 5 * se_std
    assert abs(samples.mean().item() - mu) < 5 * se_mean + 1e-3
    assert abs(samples.std().item() - sigma) < 5 * se_std + 0.01 * sigma


def test_inpainting_keeps_the_masked_latents():
    """Where mask = 1 the chain ends on q_sample(x0, t = 0) = √ᾱ_0 x0 + √(1 − ᾱ_0) ε, i.e. x0 up to 1 %."""
    model = make_pixel_ldm(timesteps=50, image_size=8)
    model.model.diffusion_model = GaussianOptimum(0.0, 1.0, model.alphas_cumprod, "eps")
    x0 = torch.full((2, 1, 8, 8), 3.0)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1.0
    torch.manual_seed(0)
    samples, intermediates = model.sample(
        None, batch_size=2, shape=(2, 1, 8, 8), x0=x0, mask=mask, verbose=False, return_intermediates=True
    )
    kept = samples[..., :4]
    assert (kept - 3.0).abs().max() < 0.05
    assert (samples[..., 4:] - 3.0).abs().mean() > 0.5
    assert len(intermediates) == 3  # x_T, then after steps 49 (the first) and 0 (0 % log_every_t == 0)


@pytest.mark.parametrize("kind", ["DDPM", "LatentDiffusion"])
def test_a_generator_makes_sampling_reproducible(kind):
    model = make_ddpm(timesteps=20, image_size=4) if kind == "DDPM" else make_pixel_ldm(timesteps=20, image_size=4)
    model.model.diffusion_model = GaussianOptimum(0.0, 1.0, model.alphas_cumprod, "eps")

    def draw(global_seed: int, seed: int = 7) -> torch.Tensor:
        torch.manual_seed(global_seed)  # must not matter
        generator = torch.Generator().manual_seed(seed)
        if kind == "DDPM":
            return model.sample(batch_size=2, generator=generator)
        x0, mask = torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
        mask[..., 2:] = 0
        return model.sample(None, batch_size=2, x0=x0, mask=mask, verbose=False, generator=generator)

    first = draw(0)
    torch.testing.assert_close(draw(1), first, rtol=0, atol=0)
    assert not torch.equal(draw(0, seed=8), first)


# --------------------------------------------------------------------------------------------------------
# Image logs
# --------------------------------------------------------------------------------------------------------


def test_ddpm_log_images_rows():
    model = make_ddpm(timesteps=10, log_every_t=4, image_size=4, channels=3)
    batch = {"image": torch.rand(3, 4, 4, 3)}
    log = model.log_images(batch, N=3, n_row=2)
    assert set(log) == {"inputs", "diffusion_row", "samples", "denoise_row"}
    # logged steps 0, 4, 8 and 9: a grid of 2 rows x 4 columns of 4x4 images with 2-pixel padding
    assert log["diffusion_row"].shape == (3, 2 * 6 + 2, 4 * 6 + 2)
    # denoise row: x_T, then steps 9, 8, 4, 0 for each of the 3 samples
    assert log["denoise_row"].shape == (3, 3 * 6 + 2, 5 * 6 + 2)
    assert log["samples"].shape == (3, 3, 4, 4)
    assert set(model.log_images(batch, sample=False, return_keys=["inputs"])) == {"inputs"}


def test_latent_diffusion_log_images_keys(caplog):
    model = make_pixel_ldm(timesteps=10, log_every_t=5, image_size=4, channels=3)
    batch = {"image": torch.rand(2, 4, 4, 3) * 2 - 1}
    with caplog.at_level("INFO", logger="ldm.models.diffusion.image_logging"):
        log = model.log_images(batch, N=2, n_row=2, ddim_steps=None)
    assert "all 10 timesteps (10 model calls on 2 samples)" in caplog.text and "plot_progressive_rows" in caplog.text
    assert log["diffusion_row"].ndim == 3 and log["progressive_row"].ndim == 3  # ready grids, as the original
    assert model.log_images(batch, N=2, ddim_steps=5, return_keys=["samples"])["samples"].shape == (2, 3, 4, 4)
    expected = {"inputs", "reconstruction", "diffusion_row", "samples", "progressive_row"}
    assert expected | {"samples_inpainting", "mask", "samples_outpainting"} <= set(log)
    torch.testing.assert_close(log["reconstruction"], log["inputs"])
    assert log["samples"].shape == (2, 3, 4, 4)
    colorized = model.to_rgb(torch.randn(2, 5, 4, 4))
    assert colorized.shape == (2, 3, 4, 4) and colorized.min() == -1.0 and colorized.max() == 1.0


# --------------------------------------------------------------------------------------------------------
# Original public names and attributes
# --------------------------------------------------------------------------------------------------------


def test_module_level_names_of_the_original():
    assert ddpm.__conditioning_keys__ == {"concat": "c_concat", "crossattn": "c_crossattn", "adm": "y"}
    assert ddpm.disabled_train(model := nn.Linear(1, 1), False) is model
    torch.manual_seed(3)
    draws = ddpm.uniform_on_device(2.0, -1.0, (4, 5), "cpu")
    torch.manual_seed(3)
    torch.testing.assert_close(draws, 3.0 * torch.rand(4, 5) - 1.0)
    assert draws.shape == (4, 5) and draws.min() >= -1.0 and draws.max() < 2.0


def test_latent_diffusion_attributes_and_bbox_rescaling():
    model = make_pixel_ldm()
    assert model.bbox_tokenizer is None
    assert model.cond_stage_model is None and model.restarted_from_ckpt is False
    # crop (0.2, 0.1, 0.5, 0.5): a box starting left of the crop is clipped to 0 and keeps its width in crop units
    boxes = model._rescale_annotations([(0.1, 0.3, 0.2, 0.1), (0.6, 0.5, 0.4, 0.9)], (0.2, 0.1, 0.5, 0.5))
    np.testing.assert_allclose(boxes, [(0.0, 0.4, 0.4, 0.2), (0.8, 0.8, 0.2, 0.2)], rtol=1e-12, atol=1e-12)


def test_p_sample_refuses_codebook_ids_with_the_original_exception():
    model = make_pixel_ldm(timesteps=10)
    with pytest.raises(DeprecationWarning, match="return_codebook_ids"):
        model.p_sample(torch.zeros(1, 3, 2, 2), None, torch.tensor([3]), return_codebook_ids=True)


def test_original_conditioning_is_the_colorized_map_only_when_the_shown_conditioning_is_one():
    """The original checks ``ismap`` on what it logs as ``conditioning`` (the decoded c), not the raw input."""

    class Decodes(nn.Module):
        def decode(self, c: torch.Tensor) -> torch.Tensor:
            return c[:, :3]

    model = make_pixel_ldm()
    x, seg = torch.zeros(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    model.cond_stage_model, model.cond_stage_key = Decodes(), "segmentation"
    log = image_logging.conditioning_log(model, {}, seg, x, seg)
    assert set(log) == {"conditioning"}
    torch.testing.assert_close(log["conditioning"], seg[:, :3])
    model.cond_stage_model = None  # no decoder: the raw map is shown, colorized
    log = image_logging.conditioning_log(model, {}, seg, x, seg)
    assert set(log) == {"original_conditioning"}
    assert log["original_conditioning"].shape == (2, 3, 4, 4)


def test_a_checkpoint_with_a_logvar_entry_loads_strictly():
    """ControlNet-style checkpoints store ``logvar``: accepted and dropped for a fixed logvar (it stays
    ``logvar_init``), loaded into the parameter with ``learn_logvar``."""
    fixed = make_ddpm()
    state = {**fixed.state_dict(), "logvar": torch.full((fixed.num_timesteps,), 3.0)}
    fixed.load_state_dict(state, strict=True)
    assert torch.equal(fixed.logvar, torch.zeros(fixed.num_timesteps))
    learned = make_ddpm(learn_logvar=True)
    learned.load_state_dict(state, strict=True)
    assert isinstance(learned.logvar, nn.Parameter) and torch.equal(learned.logvar.data, state["logvar"])


def test_sd2_signature_order_and_return_x():
    """SD 2.x order of DDPM's last keywords; ``get_input(return_x=True)`` appends x before the original cond."""
    import inspect

    parameters = inspect.signature(DDPM.__init__).parameters.values()
    names = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]  # new options are keyword-only
    assert names[-4:] == ["make_it_fit", "ucg_training", "reset_ema", "reset_num_ema_updates"]
    model = make_pixel_ldm(timesteps=10, image_size=4, channels=3)
    batch = {"image": torch.rand(2, 4, 4, 3) * 2 - 1}
    z, c, x = model.get_input(batch, "image", return_x=True)
    torch.testing.assert_close(x, batch["image"].permute(0, 3, 1, 2))
    assert c is None and z.shape == (2, 3, 4, 4)
