"""The shapes feature space (ldm/evaluation/shapes_features.py): deterministic, cached, and a distance that separates
held-out real shapes from corrupted or collapsed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.data.shapes import COLORS, KINDS, POSITIONS, SIZES, ShapesDataset, ShapeSpec, render
from ldm.evaluation import shapes_features
from ldm.evaluation.demo_metrics import heldout_images, samples_shapes_distance, stage1_quality
from ldm.evaluation.features import POOL
from ldm.evaluation.reconstruction import evaluate_autoencoder
from ldm.evaluation.shapes_features import (
    ATTRIBUTES,
    ShapesFeatureExtractor,
    ShapesFeatureSettings,
    as_image_batch,
    attribute_accuracy,
    load_shapes_feature_net,
    shapes_frechet_distance,
    shapes_frechet_distance_from_features,
    train_shapes_feature_net,
)
from ldm.models.autoencoder import AutoencoderKL

#: A budget of about two seconds on one core (the default trains on 6000 images for 4 epochs).
TINY = ShapesFeatureSettings(train_images=800, epochs=3, batch_size=64, learning_rate=3e-3)


@pytest.fixture(scope="module")
def extractor(tmp_path_factory: pytest.TempPathFactory) -> ShapesFeatureExtractor:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ShapesFeatureExtractor(cache_dir=tmp_path_factory.mktemp("shapes-cache"), settings=TINY)
    finally:
        torch.set_num_threads(threads)


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    settings = ShapesFeatureSettings(train_images=64, epochs=1, batch_size=32)
    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    first = train_shapes_feature_net(settings).state_dict()
    assert torch.equal(torch.rand(3), before)  # the global generator was not advanced
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the net is trained on one thread whatever the caller's setting
    try:
        second = train_shapes_feature_net(settings).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train_shapes_feature_net(ShapesFeatureSettings(train_images=64, epochs=1, batch_size=32, seed=1))
    assert not torch.equal(other.state_dict()["heads.kind.weight"], first["heads.kind.weight"])


def test_the_net_is_cached_once_by_its_settings(tmp_path, monkeypatch) -> None:
    settings = ShapesFeatureSettings(train_images=64, epochs=1, batch_size=32)
    trained = load_shapes_feature_net(settings, tmp_path)
    files = list(tmp_path.glob("shapes-features-*.safetensors"))
    assert [f.name for f in files] == [f"shapes-features-{settings.digest()}.safetensors"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained again although the cache holds the net")

    monkeypatch.setattr(shapes_features, "train_shapes_feature_net", no_training)
    cached = load_shapes_feature_net(settings, tmp_path)
    assert all(torch.equal(v, cached.state_dict()[k]) for k, v in trained.state_dict().items())
    assert ShapesFeatureSettings(seed=1).digest() != ShapesFeatureSettings().digest()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert shapes_features.default_cache_dir() == tmp_path / "xdg" / "ldm" / "shapes_features"


def test_image_formats_give_the_same_features(extractor: ShapesFeatureExtractor) -> None:
    images = heldout_images(6)  # (6, 3, 32, 32) in [-1, 1], exactly k/127.5 - 1 for uint8 k
    as_uint8_nchw = torch.round((images + 1) * 127.5).to(torch.uint8)
    as_uint8_nhwc = as_uint8_nchw.permute(0, 2, 3, 1).numpy()
    reference = extractor.features(images)
    assert reference.shape == (6, TINY.feature_dim)
    torch.testing.assert_close(extractor(as_uint8_nchw)[POOL], reference)
    torch.testing.assert_close(extractor.features(as_uint8_nhwc), reference)
    torch.testing.assert_close(extractor.features(list(as_uint8_nhwc)), reference)
    big = F.interpolate(images, scale_factor=2, mode="nearest")  # 64 px: area-averaged back to 32 exactly
    torch.testing.assert_close(extractor.features(big), reference, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        as_image_batch(np.zeros((2, 8, 8, 3), dtype=np.float32))


def drawn(count: int, kinds: tuple[str, ...], colors: tuple[str, ...], seed: int = 0) -> np.ndarray:
    """``count`` shapes ``(count, 32, 32, 3)`` uint8 of the given kinds and colours, sizes and positions at random."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        spec = ShapeSpec(kinds[rng.integers(len(kinds))], colors[rng.integers(len(colors))],
                         list(SIZES)[rng.integers(len(SIZES))], list(POSITIONS)[rng.integers(len(POSITIONS))])
        images.append(render(spec, 32, tuple(rng.uniform(-1.5, 1.5, size=2))))
    return np.stack(images)


def separation(extractor: ShapesFeatureExtractor, count: int = 300) -> dict[str, float]:
    """Distance from ``count`` held-out test shapes to another ``count`` of them, and to ``count`` corrupted or
    collapsed images (equal set sizes, so the finite-sample bias is the same for all)."""
    images = heldout_images(2 * count)
    real_a, real_b = images[:count], images[count:]
    features_b = extractor.features(real_b)
    generator = torch.Generator().manual_seed(0)
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = (kernel[:, None] * kernel[None]) / 256  # 5x5 binomial blur
    candidates = {
        "real": real_a,
        "noise": (real_a + 0.3 * torch.randn(real_a.shape, generator=generator)).clamp(-1, 1),
        "blur": F.conv2d(F.pad(real_a, (2, 2, 2, 2), mode="replicate"), kernel.expand(3, 1, 5, 5).contiguous(),
                         groups=3),
        "wrong colour": real_a[:, [1, 2, 0]],  # RGB -> GBR: colours off the palette
        "circles only": drawn(count, ("circle",), tuple(COLORS)),
        "red only": drawn(count, KINDS, ("red",)),
    }
    return {name: shapes_frechet_distance_from_features(extractor.features(images), features_b)
            for name, images in candidates.items()}


def test_distance_separates_real_from_corrupted_and_collapsed_sets(extractor: ShapesFeatureExtractor) -> None:
    distances = separation(extractor)
    real = distances.pop("real")
    for name, distance in distances.items():
        assert distance > 2 * real, (name, distance, real)
    images = heldout_images(20)
    assert shapes_frechet_distance(images[:10], images[10:], extractor) == pytest.approx(
        shapes_frechet_distance_from_features(extractor.features(images[:10]), extractor.features(images[10:])))
    features = extractor.features(images)
    assert shapes_frechet_distance_from_features(features, features) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_full_budget_net_reads_the_attributes_and_separates_sets(tmp_path) -> None:
    extractor = ShapesFeatureExtractor(cache_dir=tmp_path)  # the default settings: about 20 s on one core
    dataset = ShapesDataset(size=32, length=500, split="test")
    labels = {name: [dataset[i][name] for i in range(len(dataset))] for name in ATTRIBUTES}
    accuracy = attribute_accuracy(extractor.net, heldout_images(500), labels)
    assert min(accuracy.values()) > 0.97, accuracy
    distances = separation(extractor)
    real = distances.pop("real")
    assert all(distance > 2.5 * real for distance in distances.values()), (real, distances)


# ---- the demo's figures (ldm/evaluation/demo_metrics.py) -------------------------------------------------------


def test_demo_sample_distance_reads_the_sample_folder_and_reports_the_real_floor(tmp_path, extractor) -> None:
    folder = tmp_path / "txt2img-scale3"
    (folder / "samples").mkdir(parents=True)
    pictures = drawn(12, ("square",), tuple(COLORS))
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / "samples" / f"{i:05}.png")
    Image.fromarray(np.zeros((70, 70, 3), dtype=np.uint8)).save(folder / "grid-0000.png")  # not a sample
    figures = samples_shapes_distance(folder, heldout=40, extractor=extractor)
    reference = extractor.features(heldout_images(40, split="test"))
    assert figures["samples"] == 12
    assert figures["shapes_fd"] == pytest.approx(
        shapes_frechet_distance_from_features(extractor.features(pictures), reference), rel=1e-9)
    assert figures["real_floor"] == pytest.approx(shapes_frechet_distance_from_features(
        extractor.features(heldout_images(12, split="validation")), reference), rel=1e-9)
    assert figures["shapes_fd"] > figures["real_floor"]  # squares only
    with pytest.raises(ValueError, match="at least 2"):
        samples_shapes_distance(tmp_path / "empty-does-not-exist", extractor=extractor)


def test_demo_stage1_quality_is_the_reconstruction_report(extractor) -> None:
    from tests.test_eval_autoencoder import DDCONFIG, IDENTITY

    torch.manual_seed(0)
    autoencoder = AutoencoderKL(ddconfig={**DDCONFIG, "resolution": 32}, lossconfig=IDENTITY, embed_dim=2).eval()
    images = heldout_images(4)
    figures = stage1_quality(autoencoder, images, extractor, batch_size=3)
    report = evaluate_autoencoder(autoencoder, [images], feature_extractor=extractor)
    assert figures == pytest.approx({"psnr_8bit_db": report.psnr, "ssim": report.ssim, "shapes_fd": report.rfid},
                                    rel=1e-5)
