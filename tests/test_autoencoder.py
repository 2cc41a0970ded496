"""First-stage autoencoders: key manifests of the released configs, the original's reference outputs,
checkpoint loading, the VQ interface, input errors and short Lightning fits with the adversarial losses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger
from torch.utils.data import DataLoader

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage, VQModel, VQModelInterface
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import instantiate_from_config
from tests.helpers import load_manifest, state_dict_manifest

CONFIGS = Path(__file__).parents[1] / "configs" / "autoencoder"
IDENTITY = {"target": "torch.nn.Identity"}
TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
                     num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
KL_LOSS = {"target": "ldm.modules.losses.LPIPSWithDiscriminator",
           "params": {"disc_start": 0, "perceptual_weight": 0.0, "kl_weight": 1e-6, "disc_weight": 0.5,
                      "disc_num_layers": 1}}
VQ_LOSS = {"target": "ldm.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
           "params": {"disc_start": 0, "perceptual_weight": 0.0, "disc_weight": 0.5, "disc_num_layers": 1,
                      "n_classes": 16}}


def _model_config(name: str, **overrides: Any) -> Any:
    config = OmegaConf.load(CONFIGS / name).model
    for key, value in overrides.items():
        OmegaConf.update(config, key, value, merge=False)
    return config


def _strip(manifest: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in manifest.items() if k.startswith(prefix)}


# ---- released configs against the original's state-dict manifests -----------------------------------------


def test_kl_f8_config_gives_the_original_keys_shapes_and_dtypes() -> None:
    with torch.device("meta"):
        model = instantiate_from_config(_model_config("autoencoder_kl_32x32x4.yaml"))
    assert state_dict_manifest(model) == load_manifest("ldm-kl-f8.tsv")


def test_kl_f8_with_identity_loss_is_the_sd_v1_first_stage() -> None:
    with torch.device("meta"):
        model = instantiate_from_config(_model_config("autoencoder_kl_32x32x4.yaml", **{"params.lossconfig": IDENTITY}))
    assert state_dict_manifest(model) == _strip(load_manifest("sd-v1.first_stage.tsv"), "first_stage_model.")


def test_vq_f4_interface_is_the_cin256_first_stage() -> None:
    config = _model_config("vq_f4.yaml", **{"params.lossconfig": IDENTITY})
    config.target = "ldm.models.autoencoder.VQModelInterface"
    with torch.device("meta"):
        model = instantiate_from_config(config)
    assert state_dict_manifest(model) == _strip(load_manifest("ldm-cin256-v2.tsv"), "first_stage_model.")


@pytest.mark.parametrize(
    ("name", "codebook", "levels", "attn_level"),
    [("vq_f4.yaml", (8192, 3), 3, None), ("vq_f8.yaml", (16384, 4), 4, 3), ("vq_f16.yaml", (16384, 8), 5, 4)],
)
def test_vq_configs_build_the_released_architectures(name: str, codebook: tuple, levels: int,
                                                     attn_level: int | None) -> None:
    with torch.device("meta"):
        model = instantiate_from_config(_model_config(name, **{"params.lossconfig": IDENTITY}))
    assert isinstance(model, VQModel)
    assert tuple(model.quantize.embedding.weight.shape) == codebook
    assert len(model.encoder.down) == levels and model.encoder.downsampling_factor == 2 ** (levels - 1)
    with_attn = [i for i, down in enumerate(model.encoder.down) if len(down.attn)]
    assert with_attn == ([] if attn_level is None else [attn_level])


@pytest.mark.parametrize("name", ["autoencoder_kl_8x8x64.yaml", "autoencoder_kl_16x16x16.yaml",
                                  "autoencoder_kl_64x64x3.yaml"])
def test_other_kl_configs_build(name: str) -> None:
    config = _model_config(name)
    with torch.device("meta"):
        model = instantiate_from_config(config)
    ddconfig = config.params.ddconfig
    assert model.quant_conv.weight.shape == (2 * config.params.embed_dim, 2 * ddconfig.z_channels, 1, 1)
    assert model.encoder.downsampling_factor == 2 ** (len(ddconfig.ch_mult) - 1)
    assert "loss.logvar" in model.state_dict()


# ---- the original's outputs on the tiny config ----------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> dict:
    from tests.helpers import REFDATA

    return torch.load(REFDATA / "vectors" / "ldm_tiny.pt", weights_only=True)["autoencoder"]


@pytest.fixture(scope="module")
def tiny_kl(reference: dict) -> AutoencoderKL:
    from tests.helpers import REFDATA

    model = instantiate_from_config(OmegaConf.load(REFDATA / "configs" / "autoencoder_kl_tiny.yaml").model)
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


def test_tiny_autoencoder_reproduces_the_original(tiny_kl: AutoencoderKL, reference: dict) -> None:
    image, expected = reference["inputs"]["image"], reference["outputs"]

    def close(actual: torch.Tensor, key: str) -> None:
        torch.testing.assert_close(actual, expected[key], rtol=1e-4, atol=1e-4, msg=lambda m: f"{key}: {m}")

    with torch.no_grad():
        close(tiny_kl.encoder(image), "encoder_h")
        close(tiny_kl.quant_conv(tiny_kl.encoder(image)), "moments")
        posterior = tiny_kl.encode(image)
        for name in ("mean", "logvar", "std", "var"):
            close(getattr(posterior, name), f"posterior_{name}")
        close(posterior.mode(), "posterior_mode")
        close(tiny_kl.decode(posterior.mean), "decode_mean")
        close(tiny_kl(image, sample_posterior=False)[0], "forward_sample_posterior_false")
        torch.manual_seed(1234)
        close(tiny_kl(image)[0], "forward_sample_posterior_true_seed1234")
        torch.manual_seed(1234)
        close(torch.randn(posterior.mean.shape), "forward_sample_noise_seed1234")
        close(posterior.kl(), "kl")
        close(posterior.nll(posterior.mean + 0.5), "nll_of_mean_plus_0.5")


def test_init_from_ckpt_loads_a_lightning_checkpoint(tiny_kl: AutoencoderKL, reference: dict, tmp_path: Path) -> None:
    path = tmp_path / "kl.ckpt"
    torch.save({"state_dict": reference["state_dict"], "global_step": 7}, path)
    config = OmegaConf.load(Path(__file__).parent / "refdata" / "configs" / "autoencoder_kl_tiny.yaml").model
    config.params.ckpt_path = str(path)
    loaded = instantiate_from_config(config)
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(loaded.state_dict()[key], value.float(), msg=key)

    config.params.ignore_keys = ["decoder."]
    partial = instantiate_from_config(config)
    assert torch.equal(partial.encoder.conv_in.weight, loaded.encoder.conv_in.weight)
    assert not torch.equal(partial.decoder.conv_in.weight, loaded.decoder.conv_in.weight)


# ---- interfaces ---------------------------------------------------------------------------------------------


def _tiny_vq(cls: type = VQModel, lossconfig: dict = IDENTITY, **kwargs: Any) -> VQModel:
    ddconfig = {**TINY_DDCONFIG, "double_z": False}
    torch.manual_seed(0)
    return cls(ddconfig=ddconfig, lossconfig=lossconfig, n_embed=16, embed_dim=4, **kwargs)


def _tiny_kl(lossconfig: dict = IDENTITY, **kwargs: Any) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(ddconfig=TINY_DDCONFIG, lossconfig=lossconfig, embed_dim=4, **kwargs)


def test_get_input_makes_contiguous_float_channels_first() -> None:
    model = _tiny_kl()
    images = torch.arange(2 * 16 * 16 * 3, dtype=torch.float64).reshape(2, 16, 16, 3)
    x = model.get_input({"image": images}, "image")
    assert x.dtype == torch.float32 and x.is_contiguous() and x.shape == (2, 3, 16, 16)
    assert torch.equal(x, images.permute(0, 3, 1, 2).float())
    assert model.get_input({"image": torch.zeros(2, 16, 16)}, "image").shape == (2, 1, 16, 16)


def test_vq_batch_resize_range_uses_the_largest_size_first() -> None:
    model = _tiny_vq(batch_resize_range=[8, 24])
    assert model.get_input({"image": torch.rand(2, 16, 16, 3)}, "image").shape == (2, 3, 24, 24)


def test_kl_forward_and_last_layer() -> None:
    model = _tiny_kl().eval()
    x = torch.randn(2, 3, 16, 16)
    posterior = model.encode(x)
    assert isinstance(posterior, DiagonalGaussianDistribution) and posterior.mean.shape == (2, 4, 8, 8)
    reconstruction, _ = model(x, sample_posterior=False)
    torch.testing.assert_close(reconstruction, model.decode(posterior.mode()))
    assert model.get_last_layer() is model.decoder.conv_out.weight


def test_vq_model_interface_quantizes_in_decode() -> None:
    vq, interface = _tiny_vq(sane_index_shape=True).eval(), _tiny_vq(VQModelInterface).eval()
    interface.load_state_dict(vq.state_dict())
    x = torch.randn(2, 3, 16, 16)
    h = interface.encode(x)
    torch.testing.assert_close(h, vq.encode_to_prequant(x))
    quant, _, (_, _, indices) = vq.encode(x)
    assert indices.shape == (2, 8, 8)
    torch.testing.assert_close(interface.decode(h), vq.decode(quant))
    torch.testing.assert_close(interface.decode(h, force_not_quantize=True), vq.decode(h))
    torch.testing.assert_close(vq.decode_code(indices), vq.decode(quant))
    reconstruction, diff, predicted = vq(x, return_pred_indices=True)
    assert torch.equal(predicted, indices) and diff.ndim == 0 and reconstruction.shape == x.shape


def test_identity_first_stage() -> None:
    x = torch.randn(1, 3, 4, 4)
    stage = IdentityFirstStage(vq_interface=True)
    assert stage.encode(x) is x and stage.decode(x) is x and stage(x) is x
    assert stage.quantize(x) == (x, None, [None, None, None])
    assert IdentityFirstStage().quantize(x) is x


def test_kl_needs_double_z() -> None:
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(ddconfig={**TINY_DDCONFIG, "double_z": False}, lossconfig=IDENTITY, embed_dim=4)


@pytest.mark.parametrize(
    ("shape", "message"),
    [((1, 3, 17, 16), "divisible by the encoder's downsampling factor 2"), ((1, 1, 16, 16), r"\(B, 3, H, W\)")],
)
def test_encode_rejects_bad_images(shape: tuple, message: str) -> None:
    for model in (_tiny_kl(), _tiny_vq(), _tiny_vq(VQModelInterface)):
        with pytest.raises(ValueError, match=message):
            model.encode(torch.zeros(shape))


def test_optimizers_leave_logvar_out() -> None:
    model = _tiny_kl(KL_LOSS)
    with pytest.raises(AttributeError, match="learning_rate is not set"):
        model.configure_optimizers()
    model.learning_rate = 1e-3
    (opt_ae, opt_disc), schedulers = model.configure_optimizers()
    ae_params = {id(p) for g in opt_ae.param_groups for p in g["params"]}
    disc_params = {id(p) for g in opt_disc.param_groups for p in g["params"]}
    expected_ae = {id(p) for n, p in model.named_parameters() if not n.startswith("loss.")}
    assert ae_params == expected_ae and disc_params == {id(p) for p in model.loss.discriminator.parameters()}
    assert id(model.loss.logvar) not in ae_params | disc_params and schedulers == []
    assert opt_ae.defaults["betas"] == (0.5, 0.9) and opt_ae.defaults["lr"] == 1e-3

    vq = _tiny_vq(lossconfig=VQ_LOSS, lr_g_factor=0.5)
    vq.learning_rate = 1e-3
    (opt_ae, opt_disc), _ = vq.configure_optimizers()
    assert any(p is vq.quantize.embedding.weight for g in opt_ae.param_groups for p in g["params"])
    assert (opt_ae.defaults["lr"], opt_disc.defaults["lr"]) == (5e-4, 1e-3)


def test_training_needs_a_discriminator_loss() -> None:
    model = _tiny_kl()
    model.learning_rate = 1e-3
    with pytest.raises(ValueError, match="has no discriminator"):
        model.configure_optimizers()


def test_log_images() -> None:
    batch = {"image": torch.rand(2, 16, 16, 3) * 2 - 1}
    logs = _tiny_kl().eval().log_images(batch)
    assert sorted(logs) == ["inputs", "reconstructions", "samples"]
    assert all(v.shape == (2, 3, 16, 16) for v in logs.values())
    assert sorted(_tiny_vq().eval().log_images(batch)) == ["inputs", "reconstructions"]  # the original's keys
    assert list(_tiny_kl().log_images(batch, only_inputs=True)) == ["inputs"]

    segmentation = {"segmentation": torch.rand(2, 16, 16, 5)}
    model = AutoencoderKL(ddconfig={**TINY_DDCONFIG, "in_channels": 5, "out_ch": 5}, lossconfig=IDENTITY, embed_dim=4,
                          image_key="segmentation", colorize_nlabels=5).eval()
    logs = model.log_images(segmentation)
    assert all(v.shape == (2, 3, 16, 16) and v.min() >= -1 and v.max() <= 1 for v in logs.values())



def test_kl_log_images_draws_in_the_original_order() -> None:
    """Original: reconstruction from a posterior sample, then ``decode(randn_like(posterior.sample()))``."""
    batch = {"image": torch.rand(2, 16, 16, 3) * 2 - 1}
    model = _tiny_kl().eval()
    torch.manual_seed(7)
    logs = model.log_images(batch)
    x = model.get_input(batch, "image")
    with torch.no_grad():
        posterior = model.encode(x)
        torch.manual_seed(7)
        reconstruction = model.decode(posterior.sample())
        posterior.sample()
        samples = model.decode(torch.randn_like(posterior.mean))
    torch.testing.assert_close(logs["reconstructions"], reconstruction)
    torch.testing.assert_close(logs["samples"], samples)

# ---- Lightning fits ------------------------------------------------------------------------------------------


class CapturingLogger(Logger):
    """Keeps every logged metric name with its values."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, list[float]] = {}

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append(float(value))


def _images(n: int = 6) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(16, 16, 3, generator=generator) * 2 - 1} for _ in range(n)]
    return DataLoader(data, batch_size=2)


def _fit(model: pl.LightningModule, max_steps: int = 3, batches: int = 6, **trainer_kwargs: Any) -> CapturingLogger:
    logger = CapturingLogger()
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         log_every_n_steps=1, limit_val_batches=1, **trainer_kwargs)
    trainer.fit(model, train_dataloaders=_images(batches), val_dataloaders=_images(2))
    return logger


def _changed(before: dict, model: torch.nn.Module, prefix: str) -> bool:
    after = model.state_dict()
    return all(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and k.endswith("weight"))


def test_kl_fit_updates_autoencoder_and_discriminator_but_not_logvar() -> None:
    model = _tiny_kl(KL_LOSS)
    model.learning_rate = 1e-3
    before = copy.deepcopy(model.state_dict())
    metrics = _fit(model).metrics
    assert _changed(before, model, "encoder.") and _changed(before, model, "decoder.")
    assert _changed(before, model, "loss.discriminator.main.0")
    assert torch.equal(model.loss.logvar.detach(), before["loss.logvar"])
    assert model.trainer.global_step == 3  # one global step per batch, as the original counts
    for key in ("train/rec_loss", "train/kl_loss", "train/d_weight", "train/disc_loss", "train/logits_real",
                "train/logits_fake", "aeloss_step", "discloss_step", "val/rec_loss"):
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"
    assert len(metrics["train/rec_loss"]) == 3


@pytest.mark.parametrize("loss_params", [{"disc_start": 2}, {"disc_factor": 0.0}], ids=["before_disc_start", "off"])
def test_inactive_gan_skips_the_graph_but_trains_exactly_as_the_full_path(loss_params: dict, monkeypatch) -> None:
    """Steps where the GAN terms have weight 0: the discriminator runs without a graph (with ``disc_factor: 0``
    not at all), yet the weights and the optimizers' states equal those of the full path that back-propagates the
    zero-weighted terms."""
    lossconfig = {**KL_LOSS, "params": {**KL_LOSS["params"], **loss_params}}
    models = []
    for force_graph in (False, True):
        torch.manual_seed(0)
        model = _tiny_kl(lossconfig)
        model.learning_rate = 1e-3
        initial_disc = model.loss.discriminator.main[0].weight.detach().clone()
        if force_graph:
            model.loss.gan_active = lambda global_step: True
            monkeypatch.setattr(type(model.loss), "discriminator_used", True)
        _fit(model, max_steps=4)
        models.append(model)
    fast, full = models
    never_run = "disc_factor" in loss_params  # its BatchNorm statistics are the only state a forward pass changes
    for key, value in full.state_dict().items():
        if never_run and "discriminator" in key and ("running_" in key or "num_batches_tracked" in key):
            assert torch.equal(fast.state_dict()[key], _tiny_kl(lossconfig).state_dict()[key]), key
            continue
        assert torch.equal(fast.state_dict()[key], value), key
    for fast_opt, full_opt in zip(fast.trainer.optimizers, full.trainer.optimizers):
        for fast_state, full_state in zip(fast_opt.state.values(), full_opt.state.values()):
            assert all(torch.equal(fast_state[k], full_state[k]) for k in full_state)
    # from disc_start on (steps 2 and 3) the discriminator trains; while off it keeps its initial weights
    trained = not torch.equal(fast.loss.discriminator.main[0].weight.detach(), initial_disc)
    assert trained == ("disc_start" in loss_params)


class HalvingSchedule:
    """A ``scheduler_config`` target: the learning-rate factor halves every step."""

    def schedule(self, step: int) -> float:
        return 0.5**step


def test_vq_fit_updates_weights_logs_perplexity_ema_and_steps_the_schedule() -> None:
    model = _tiny_vq(lossconfig=VQ_LOSS, use_ema=True,
                     scheduler_config={"target": "tests.test_autoencoder.HalvingSchedule"})
    model.learning_rate = 1e-3
    before = copy.deepcopy(model.state_dict())
    metrics = _fit(model).metrics
    assert [opt.param_groups[0]["lr"] for opt in model.trainer.optimizers] == [1e-3 * 0.5**3] * 2
    assert _changed(before, model, "encoder.") and _changed(before, model, "quantize.")
    assert _changed(before, model, "loss.discriminator.main.0")
    assert int(model.model_ema.num_updates) == 3
    for key in ("train/rec_loss_step", "train/quant_loss_step", "train/perplexity_step", "train/disc_loss_step",
                "val/rec_loss", "val_ema/rec_loss"):
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"


def test_manual_gradient_accumulation_counts_updates() -> None:
    model = _tiny_kl(KL_LOSS)
    model.learning_rate = 1e-3
    model.accumulate_grad_batches = 2
    _fit(model, max_steps=-1, batches=6, max_epochs=1)
    assert model.trainer.global_step == 2  # 3 batches: an update after batch 2 and after the last one


def test_non_finite_loss_names_the_step_and_the_term() -> None:
    model = _tiny_kl(KL_LOSS)
    model.learning_rate = 1e-3
    with torch.no_grad():
        model.loss.logvar.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"autoencoder loss is nan at global step 0; non-finite terms:.*"
                                                 r"train/nll_loss=nan"):
        _fit(model, max_steps=1)
