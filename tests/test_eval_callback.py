"""SampleMetrics (ldm/callbacks/sample_metrics.py): a short fit logs FID to the CSV logger, equal to FID computed
directly on the same fixed samples; the fixed set, the rank split and the shapes adherence."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader

from ldm.callbacks.sample_metrics import SampleMetrics, rank_indices, shape_matches
from ldm.data.shapes import KINDS, ShapeSpec, render
from ldm.evaluation.features import POOL
from ldm.evaluation.frechet import feature_statistics, frechet_distance
from ldm.evaluation.reconstruction import to_8bit
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.util import ConfigError
from tests.fakes import ScaleUNet, unet
from tests.test_eval_autoencoder import TinyFeatures

SIZE, CLASSES, SAMPLES = 8, 3, 6


def tiny_class_ldm() -> LatentDiffusion:
    """A class-conditional LatentDiffusion on 8x8x3 pixels (identity first stage), ε̂ = s · x_t."""
    torch.manual_seed(0)
    model = LatentDiffusion(
        first_stage_config={"target": "ldm.models.autoencoder.IdentityFirstStage"},
        cond_stage_config={"target": "ldm.modules.encoders.modules.ClassEmbedder",
                           "params": {"embed_dim": 4, "n_classes": CLASSES, "key": "class_label"}},
        cond_stage_key="class_label", conditioning_key="crossattn", unet_config=unet(ScaleUNet),
        use_ema=False, image_size=SIZE, channels=3, timesteps=20, first_stage_key="image",
    )
    model.learning_rate = 1e-2
    return model


def items(count: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, SIZE, SIZE, 3, generator=generator) * 2 - 1
    return [{"image": images[i], "class_label": i % CLASSES} for i in range(count)]


class TinyData(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train, self.validation = items(8, seed=1), items(SAMPLES + 2, seed=2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.validation, batch_size=4)


def logged_rows(log_dir: str) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_a_short_fit_logs_fid_equal_to_a_direct_computation(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, data, features = tiny_class_ldm(), TinyData(), TinyFeatures()
    callback = SampleMetrics(every_n_steps=2, num_samples=SAMPLES, num_reference=SAMPLES + 2,
                             feature_extractor=features, steps=3, scale=2.0, batch_size=4, seed=5,
                             null_label={"class_label": [CLASSES - 1]})
    csv_logger = CSVLogger(tmp_path, name="run")
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=csv_logger, callbacks=[callback],
                         enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0)
    try:
        trainer.fit(model, datamodule=data)

        rows = [row for row in logged_rows(csv_logger.log_dir) if row.get("sample_metrics/fid")]
        assert [int(row["step"]) for row in rows] == [2, 4]
        assert [step for step, _ in callback.history] == [2, 4]
        assert callback.conditioning_batch["class_label"].tolist() == [i % CLASSES for i in range(SAMPLES)]
        assert float(rows[0]["sample_metrics/fid"]) != float(rows[1]["sample_metrics/fid"])  # the model moved

        # the same fixed samples from the final model, measured here without the callback's metric code
        model.eval()
        samples = callback.sample_images(model, list(range(SAMPLES)))
        assert samples.shape == (SAMPLES, 3, SIZE, SIZE)
        torch.testing.assert_close(callback.sample_images(model, [3, 4]), samples[3:5])  # sample i is fixed
        with torch.no_grad():
            sample_features = features(to_8bit(samples).to(torch.uint8))[POOL]
            reference = torch.stack([item["image"] for item in data.validation]).permute(0, 3, 1, 2)
            reference_features = features(to_8bit(reference).to(torch.uint8))[POOL]
        expected = frechet_distance(*feature_statistics(sample_features), *feature_statistics(reference_features))
        assert float(rows[1]["sample_metrics/fid"]) == pytest.approx(expected, rel=1e-5)
        assert trainer.callback_metrics["sample_metrics/fid"].item() == pytest.approx(expected, rel=1e-5)

        # a reference given as an ADM-layout .npz of statistics gives the same figure
        mu, sigma = feature_statistics(reference_features)
        np.savez(tmp_path / "ref.npz", mu=mu, sigma=sigma, feature_extractor=np.array(features.name))
        from_file = SampleMetrics(every_n_steps=2, num_samples=SAMPLES, reference=str(tmp_path / "ref.npz"),
                                  feature_extractor=features, steps=3, scale=2.0, batch_size=4, seed=5,
                                  null_label={"class_label": [CLASSES - 1]})
        assert from_file.measure(trainer, model)["sample_metrics/fid"] == pytest.approx(expected, rel=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_rank_shares_cover_the_set_in_order() -> None:
    for count, world in [(6, 1), (6, 4), (7, 2), (2, 3)]:
        shares = [rank_indices(count, world, rank) for rank in range(world)]
        assert len({len(share) for share in shares}) == 1
        assert [i for share in shares for i in share][:count] == list(range(count))


def test_shape_matches_reads_ground_truth_and_rejects_wrong_prompts() -> None:
    specs = [ShapeSpec("circle", "red", "large", "center"), ShapeSpec("triangle", "blue", "small", "top left")]
    images = torch.from_numpy(np.stack([render(spec, 32) for spec in specs])).permute(0, 3, 1, 2)
    images = images.float() / 127.5 - 1
    batch = {name: [getattr(spec, name) for spec in specs] for name in ("kind", "color", "size", "position")}
    assert shape_matches(images, batch).tolist() == [[1.0] * 5, [1.0] * 5]
    batch["kind"] = [KINDS[(KINDS.index(kind) + 1) % len(KINDS)] for kind in batch["kind"]]
    assert shape_matches(images, batch)[:, [0, 4]].sum().item() == 0.0


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="num_samples"):
        SampleMetrics(every_n_steps=2, num_samples=1)
    from_yaml = SampleMetrics(every_n_steps=2, null_label=OmegaConf.create({"class_label": [2]}))
    assert from_yaml.null_label == {"class_label": [2]} and type(from_yaml.null_label) is dict
    with pytest.raises(ConfigError, match="feature_extractor"):
        from ldm.callbacks.sample_metrics import build_feature_extractor

        build_feature_extractor("pkg.module:factory")
