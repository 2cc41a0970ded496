"""NoisyLatentImageClassifier: built from a tiny latent diffusion config, q_sample noising, top-k on hand cases,
one Lightning training + validation step on random images, checkpoints, the segmentation variant."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from ldm.checkpoint import save_safetensors
from ldm.models.diffusion.classifier import NoisyLatentImageClassifier, disabled_train
from ldm.modules.diffusionmodules.openaimodel import EncoderUNetModel, UNetModel

CONFIG = Path(__file__).parent / "configs" / "tiny_classifier_ldm.yaml"


@pytest.fixture(scope="module")
def classifier() -> NoisyLatentImageClassifier:
    torch.manual_seed(0)
    return NoisyLatentImageClassifier(diffusion_path=str(CONFIG), num_classes=10)


class RandomImages(Dataset):
    """16×16 RGB images in [−1, 1] (H, W, C) with class labels, as the ImageNet datasets give them."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        image = torch.rand(16, 16, 3, generator=generator) * 2 - 1
        return {"image": image, "class_label": index % 10, "human_label": f"class {index}"}


def test_builds_a_classifier_of_the_latents_next_to_a_frozen_diffusion_model(classifier):
    assert classifier.label_key == "class_label" and classifier.numd == 1 and classifier.log_time_interval == 10
    net = classifier.model
    assert isinstance(net, EncoderUNetModel) and net.in_channels == 4 and net.out_channels == 10
    assert net.pool == "attention"
    assert not any(p.requires_grad for p in classifier.diffusion_model.parameters())
    classifier.train()
    assert not classifier.diffusion_model.training and classifier.model.training
    logits = classifier(torch.randn(3, 4, 8, 8), torch.tensor([0, 50, 99]))
    assert logits.shape == (3, 10)
    assert disabled_train(net) is net


def test_get_x_noisy_is_q_sample(classifier):
    """z_t = √ᾱ_t z + √(1 − ᾱ_t) ε with ᾱ of the diffusion model's schedule."""
    z, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 42, 99])
    alpha_bar = classifier.diffusion_model.alphas_cumprod[t].view(3, 1, 1, 1)
    expected = alpha_bar.sqrt() * z + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(classifier.get_x_noisy(z, t, noise=noise), expected)


def test_compute_top_k_by_hand(classifier):
    logits = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.8],  # ranking 3, 6, 1, 5, 2, 0, 4
            [0.7, 0.1, 0.6, 0.2, 0.5, 0.4, 0.3],  # ranking 0, 2, 4, 5, 6, 3, 1
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # ranking 6, 5, 4, 3, 2, 1, 0
        ]
    )
    labels = torch.tensor([3, 6, 1])
    assert classifier.compute_top_k(logits, labels, k=1) == pytest.approx(1 / 3)
    assert classifier.compute_top_k(logits, labels, k=5) == pytest.approx(2 / 3)
    assert classifier.compute_top_k(logits, labels, k=7) == 1.0
    assert classifier.compute_top_k(logits, labels, k=50) == 1.0  # k capped at the number of classes
    torch.testing.assert_close(classifier.compute_top_k(logits, labels, k=2, reduction="none"),
                               torch.tensor([1.0, 0.0, 0.0]))  # fmt: skip
    maps = logits.T.reshape(1, 7, 1, 3)  # the three rows as pixels of a (1, 1, 3) map
    torch.testing.assert_close(classifier.compute_top_k(maps, labels.view(1, 1, 3), k=5, reduction="none"),
                               torch.tensor([[[1.0, 1.0, 0.0]]]))  # fmt: skip
    with pytest.raises(ValueError, match="reduction"):
        classifier.compute_top_k(logits, labels, k=1, reduction="sum")


def test_one_training_and_validation_step_with_lightning(tmp_path):
    """Trainer(fast_dev_run=1) on the CPU: the loss is finite, only the classifier learns, and validation logs
    the loss and the per-t accuracies (t = 0, 25, 50, 75 for log_every_t = 25)."""
    torch.manual_seed(0)
    model = NoisyLatentImageClassifier(diffusion_path=str(CONFIG), num_classes=10, pool="adaptive")
    model.learning_rate = 1e-3
    net_before = [p.detach().clone() for p in model.model.parameters()]
    diffusion_before = [p.detach().clone() for p in model.diffusion_model.parameters()]
    data = DataLoader(RandomImages(), batch_size=4)
    trainer = pl.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, train_dataloaders=data, val_dataloaders=data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert torch.isfinite(metrics["val/loss"])
    assert {f"val/acc@1_t{t}" for t in (0, 25, 50, 75)} <= set(metrics)
    assert 0.0 <= float(metrics["val/acc@5_t0"]) <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(net_before, model.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(diffusion_before, model.diffusion_model.parameters()))


def test_learning_rate_must_be_set(classifier):
    with pytest.raises(AttributeError, match="learning_rate"):
        classifier.configure_optimizers()


def test_log_images_writes_the_class_names(classifier):
    batch = {key: torch.stack([torch.as_tensor(RandomImages()[i][key]) for i in range(2)])
             for key in ("image", "class_label")}  # fmt: skip
    batch["human_label"] = ["cat", "dog"]
    log = classifier.log_images(batch, N=1)
    assert log["inputs"].shape == (1, 3, 16, 16) and log["labels"].shape == (1, 3, 16, 16)


def test_checkpoints_load_safely(classifier, tmp_path):
    """ckpt_path restores the classifier (the module's state dict, as Lightning saves it) and diffusion_ckpt_path
    the diffusion model."""
    ckpt = tmp_path / "classifier.ckpt"
    torch.save({"state_dict": classifier.state_dict(), "global_step": 3}, ckpt)
    diffusion = tmp_path / "ldm.safetensors"
    save_safetensors(diffusion, classifier.diffusion_model.state_dict())
    torch.manual_seed(1)
    restored = NoisyLatentImageClassifier(str(CONFIG), 10, ckpt_path=str(ckpt), diffusion_ckpt_path=str(diffusion))
    torch.testing.assert_close(restored.state_dict(), classifier.state_dict(), rtol=0, atol=0)


def test_diffusion_path_may_be_a_log_directory(tmp_path, caplog):
    """The newest configs/*-project.yaml in natural order (run-10 after run-9) is used."""
    configs = tmp_path / "configs"
    configs.mkdir()
    config = OmegaConf.load(CONFIG)
    for run, timesteps in (("run-9", 100), ("run-10", 60)):
        config.model.params.timesteps = timesteps
        OmegaConf.save(config, configs / f"{run}-project.yaml")
    with caplog.at_level(logging.WARNING):
        model = NoisyLatentImageClassifier(str(tmp_path), num_classes=10, pool="adaptive")
    assert model.diffusion_model.num_timesteps == 60
    with pytest.raises(FileNotFoundError, match="project.yaml"):
        NoisyLatentImageClassifier(str(configs), num_classes=10)
    with pytest.raises(FileNotFoundError, match="no such config"):
        NoisyLatentImageClassifier(str(tmp_path / "missing.yaml"), num_classes=10)


def test_segmentation_classifier(tmp_path):
    """label_key="segmentation": a UNetModel gives per-latent-pixel logits; one-hot (B, 16, 16, K) maps become
    (B, K, 8, 8) (one halving for the two-level autoencoder) and their argmax the targets."""
    config = OmegaConf.load(CONFIG)
    unet = config.model.params.unet_config.params
    unet.use_spatial_transformer = False
    del unet["context_dim"], unet["transformer_depth"]
    path = tmp_path / "segmentation-ldm.yaml"
    OmegaConf.save(config, path)
    model = NoisyLatentImageClassifier(str(path), num_classes=3, label_key="segmentation")
    assert isinstance(model.model, UNetModel)
    ids = torch.randint(0, 3, (2, 16, 16))
    batch = {"image": torch.rand(2, 16, 16, 3) * 2 - 1,
             "segmentation": torch.nn.functional.one_hot(ids, 3).float()}  # fmt: skip
    maps = model.get_conditioning(batch)
    torch.testing.assert_close(maps, torch.nn.functional.one_hot(ids[:, ::2, ::2], 3).permute(0, 3, 1, 2).float())
    loss, logits, x_noisy, targets = model._classify(batch, t=10)
    assert logits.shape == (2, 3, 8, 8) and x_noisy.shape == (2, 4, 8, 8) and torch.equal(targets, ids[:, ::2, ::2])
    assert torch.isfinite(loss).all() and loss.shape == (2, 8, 8)


def test_unknown_label_key_is_refused():
    with pytest.raises(ValueError, match="label_key"):
        NoisyLatentImageClassifier(str(CONFIG), num_classes=10, label_key="caption")
