"""Reference statistics in the ADM evaluator's .npz layout (ldm/evaluation/reference_stats.py), image sources
(ldm/evaluation/extract.py) and the Inception weights check (ldm/evaluation/features.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ldm.evaluation import features as features_module
from ldm.evaluation.extract import (
    ArrayImageSource,
    DatasetImageSource,
    ImageFolderSource,
    extract_features,
    extract_features_distributed,
)
from ldm.evaluation.features import (
    INCEPTION,
    INCEPTION_WEIGHTS_FILE,
    InceptionWeightsError,
    import_factory,
    inception_weights,
)
from ldm.evaluation.frechet import feature_statistics
from ldm.evaluation.reference_stats import (
    ReferenceStats,
    has_images,
    has_statistics,
    load_reference_stats,
    npz_images,
    save_image_batch,
)


class TinyExtractor(nn.Module):
    """A fixed random convolution: pool = mean of 6 channels, logits over 4 classes."""

    name = "tiny-test"

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3)
        self.head = nn.Linear(6, 4)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = self.conv(images.float() / 127.5 - 1).relu().mean(dim=(2, 3))
        return {"pool": pool, "logits": self.head(pool)}


def random_images(count: int, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_statistics_round_trip_keeps_moments_features_and_extractor(tmp_path) -> None:
    pool = np.random.default_rng(1).normal(size=(20, 5))
    logits = np.random.default_rng(2).normal(size=(20, 3))
    stats = ReferenceStats.from_features(pool, "tiny-test", logits)
    path = stats.save(tmp_path / "stats.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"mu", "sigma", "feature_extractor", "pool_features", "logits"}
    loaded = load_reference_stats(path)
    mu, sigma = feature_statistics(pool)
    np.testing.assert_array_equal(loaded.mu, mu)
    np.testing.assert_array_equal(loaded.sigma, sigma)
    np.testing.assert_array_equal(loaded.pool_features, pool)
    np.testing.assert_array_equal(loaded.logits, logits)
    assert loaded.feature_extractor == "tiny-test" and loaded.mu_s is None
    with pytest.raises(ValueError, match="recompute them with the same feature extractor"):
        loaded.check_extractor(INCEPTION, path)


def test_reads_an_adm_reference_batch(tmp_path) -> None:
    """The layout guided-diffusion's evaluator writes: arr_0 images, mu/sigma and the spatial mu_s/sigma_s."""
    images = random_images(6)
    rng = np.random.default_rng(3)
    arrays = {"arr_0": images, "mu": rng.normal(size=4).astype(np.float32), "sigma": np.eye(4, dtype=np.float32),
              "mu_s": rng.normal(size=3), "sigma_s": 2 * np.eye(3)}
    path = tmp_path / "VIRTUAL_test_labeled.npz"
    np.savez(path, **arrays)
    assert has_statistics(path) and has_images(path)
    stats = load_reference_stats(path)
    assert stats.feature_extractor == INCEPTION  # ADM's files carry no name: TF Inception pool_3
    np.testing.assert_array_equal(stats.mu, arrays["mu"])
    assert stats.mu.dtype == np.float64 and stats.pool_features is None
    np.testing.assert_array_equal(stats.sigma_s, arrays["sigma_s"])
    mapped = npz_images(path)
    assert isinstance(mapped, np.memmap)
    np.testing.assert_array_equal(mapped, images)


def test_image_batches_load_compressed_or_not_and_reject_non_images(tmp_path) -> None:
    images = random_images(5, seed=4)
    save_image_batch(tmp_path / "batch.npz", images, np.arange(5))
    with np.load(tmp_path / "batch.npz") as archive:
        np.testing.assert_array_equal(archive["arr_1"], np.arange(5))
    np.testing.assert_array_equal(npz_images(tmp_path / "batch.npz"), images)
    np.savez_compressed(tmp_path / "packed.npz", arr_0=images)
    np.testing.assert_array_equal(npz_images(tmp_path / "packed.npz"), images)
    np.savez(tmp_path / "floats.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        npz_images(tmp_path / "floats.npz")
    with pytest.raises(ValueError, match="no precomputed statistics"):
        load_reference_stats(tmp_path / "batch.npz")


def test_sources_agree_and_trainer_extraction_equals_the_plain_loop(tmp_path) -> None:
    images = random_images(7, seed=5)
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{index:03}.png")
    folder, array = ImageFolderSource(tmp_path), ArrayImageSource(images)
    assert len(folder) == len(array) == 7
    for index in (0, 6):
        assert torch.equal(folder[index][1], array[index][1]) and folder[index][1].shape == (3, 12, 12)
    plain = extract_features(TinyExtractor(), folder, batch_size=3)
    trainer = extract_features_distributed(TinyExtractor(), array, batch_size=2, accelerator="cpu", devices=1)
    assert plain["pool"].shape == (7, 6) and plain["logits"].shape == (7, 4)
    for key in plain:
        np.testing.assert_allclose(trainer[key], plain[key], rtol=1e-6)


def test_dataset_source_maps_minus_one_one_to_uint8() -> None:
    dataset = [{"image": np.full((2, 2, 3), value, dtype=np.float32)} for value in (-1.0, 0.0, 1.0)]
    source = DatasetImageSource(dataset)
    assert [int(source[i][1][0, 0, 0]) for i in range(3)] == [0, 128, 255]


def test_folder_of_mixed_sizes_is_an_error(tmp_path) -> None:
    Image.fromarray(random_images(1, 12)[0]).save(tmp_path / "a.png")
    Image.fromarray(random_images(1, 16)[0]).save(tmp_path / "b.png")
    source = ImageFolderSource(tmp_path)
    with pytest.raises(ValueError, match="to one size"):
        source[1]


def test_missing_inception_weights_raise_one_line_naming_file_and_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InceptionWeightsError) as caught:
        inception_weights()
    message = str(caught.value)
    assert "\n" not in message and INCEPTION_WEIGHTS_FILE in message and str(folder) in message
    with pytest.raises(InceptionWeightsError, match=f"not found in {folder}"):
        inception_weights(download=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INCEPTION_WEIGHTS_FILE).write_bytes(b"not the weights")
    with pytest.raises(InceptionWeightsError, match="is not the published Inception-v3 weights"):
        inception_weights()
    with pytest.raises(InceptionWeightsError):
        features_module.load_feature_extractor(INCEPTION)


def test_extractor_factories_are_imported_by_name() -> None:
    extractor = import_factory(f"{__name__}:TinyExtractor")
    assert isinstance(extractor, TinyExtractor)
    with pytest.raises(ValueError, match="'package.module:factory'"):
        import_factory("no_colon_here")
    with pytest.raises(ValueError, match="cannot import"):
        import_factory(f"{__name__}:missing_factory")


@pytest.mark.slow
def test_inception_wrapper_gives_pool3_and_logits(tmp_path, monkeypatch) -> None:
    """The wrapper's plumbing on a random-weight file of the right architecture (the real file is not here)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: {})
    torch.manual_seed(0)
    random_network = FeatureExtractorInceptionV3(INCEPTION, ["2048"], feature_extractor_weights_path="unused")
    monkeypatch.undo()
    path = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save(random_network.state_dict(), path)
    monkeypatch.setattr(features_module, "inception_weights", lambda weights, download: path)
    extractor = features_module.load_feature_extractor(INCEPTION)
    out = extractor(torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8))
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["pool"].dtype == torch.float32 and torch.isfinite(out["logits"]).all()
    assert extractor.name == INCEPTION and not any(p.requires_grad for p in extractor.parameters())
