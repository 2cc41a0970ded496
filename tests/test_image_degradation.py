"""``ldm.modules.image_degradation``: contracts, closed forms and statistics (the original's numbers are checked in
``test_image_degradation_reference.py``)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.modules.image_degradation import (
    bsrgan,
    bsrgan_light,
    degradation_fn_bsr,
    degradation_fn_bsr_light,
)
from ldm.modules.image_degradation import utils_image as util
from ldm.modules.image_degradation.cv_resize import cv_resize
from ldm.modules.image_degradation.noise import jpeg_roundtrip

MODULES = {"bsrgan": bsrgan, "bsrgan_light": bsrgan_light}


def seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``(height, width, 3)``: a blocky random image with mild noise (natural-image-like for JPEG)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 8 + 1, width // 8 + 1, 3))
    image = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    return (np.clip(image + 0.02 * rng.standard_normal(image.shape), 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("name", ["bsrgan", "bsrgan_light"])
@pytest.mark.parametrize("sf", [2, 4])
@pytest.mark.parametrize("shape", [(64, 64), (48, 72), (50, 66)])
def test_variant_returns_the_lr_image(name: str, sf: int, shape: tuple[int, int]) -> None:
    image = smooth_image(*shape)
    for seed in range(3):
        seeded(seed)
        out = MODULES[name].degradation_bsrgan_variant(image, sf=sf)
        low = out["image"]
        assert set(out) == {"image"} and low.dtype == np.uint8
        assert low.shape == (shape[0] // sf, shape[1] // sf, 3)
    assert image.dtype == np.uint8 and np.array_equal(image, smooth_image(*shape))  # input untouched


def test_package_exports_the_variants() -> None:
    assert degradation_fn_bsr is bsrgan.degradation_bsrgan_variant
    assert degradation_fn_bsr_light is bsrgan_light.degradation_bsrgan_variant


@pytest.mark.parametrize("name", ["bsrgan", "bsrgan_light"])
def test_pipelines_are_reproducible_under_seeds(name: str) -> None:
    module = MODULES[name]
    image = smooth_image(64, 64)
    outputs = []
    for seed in (3, 3, 4):
        seeded(seed)
        outputs.append(module.degradation_bsrgan_variant(image, sf=4)["image"])
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])
    pairs = []
    for _ in range(2):
        seeded(11)
        pairs.append(module.degradation_bsrgan(util.uint2single(image), sf=4, lq_patchsize=8))
    assert all(np.array_equal(a, b) for a, b in zip(pairs[0], pairs[1]))


@pytest.mark.parametrize("name", ["bsrgan", "bsrgan_light"])
def test_degradation_bsrgan_gives_aligned_patches(name: str) -> None:
    image = util.uint2single(smooth_image(72, 64))
    for seed in range(4):
        seeded(seed)
        lq, hq = MODULES[name].degradation_bsrgan(image, sf=4, lq_patchsize=6)
        assert lq.shape == (6, 6, 3) and hq.shape == (24, 24, 3)
        assert lq.dtype == np.float32 and 0.0 <= lq.min() and lq.max() <= 1.0
        offsets = [(i, j) for i in range(0, 49, 4) for j in range(0, 41, 4)]
        assert any(np.array_equal(image[i : i + 24, j : j + 24], hq) for i, j in offsets), "hq: crop at multiples of sf"
    with pytest.raises(ValueError, match="too small"):
        MODULES[name].degradation_bsrgan(image, sf=4, lq_patchsize=72)


def test_degradation_bsrgan_plus_shapes_and_isp_hook() -> None:
    image = util.uint2single(smooth_image(64, 64))
    calls = []

    class Camera:
        def forward(self, img: np.ndarray, hq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            calls.append(img.shape)
            return img * 0.5, hq

    for seed in range(40):
        seeded(seed)
        lq, hq = bsrgan.degradation_bsrgan_plus(image, sf=4, lq_patchsize=8, isp_model=Camera())
        assert lq.shape == (8, 8, 3) and hq.shape == (32, 32, 3)
        assert 0.0 <= lq.min() and lq.max() <= 1.0
    assert 1 <= len(calls) <= 20, "the camera step acts with probability 0.1 in each half (measured: 6 of 80)"
    seeded(0)
    _, hq = bsrgan.degradation_bsrgan_plus(image, sf=4, use_sharp=False, lq_patchsize=8)
    assert any(np.array_equal(hq, image[i : i + 32, j : j + 32]) for i in range(0, 33, 4) for j in range(0, 33, 4))


# ---------------------------------------------------------------------------------------------------- noise


def first_draw_seeds(condition) -> int:
    """The first seed whose first ``np.random.rand()`` satisfies ``condition`` (selects a noise branch)."""
    for seed in range(100):
        np.random.seed(seed)
        if condition(np.random.rand()):
            return seed
    raise AssertionError("no seed found")


def test_gaussian_noise_statistics() -> None:
    flat = np.full((256, 256, 3), 0.5, dtype=np.float32)
    colour_seed = first_draw_seeds(lambda u: u > 0.6)
    seeded(colour_seed)
    noise = (bsrgan.add_Gaussian_noise(flat, 10, 10) - 0.5).reshape(-1, 3)
    assert noise.dtype == np.float32
    np.testing.assert_allclose(noise.std(axis=0), 10 / 255, rtol=0.03)
    np.testing.assert_allclose(noise.mean(axis=0), 0, atol=4 * 10 / 255 / 256)  # 4 standard errors
    assert np.abs(np.corrcoef(noise.T) - np.eye(3)).max() < 0.02  # independent channels

    gray_seed = first_draw_seeds(lambda u: u < 0.4)
    seeded(gray_seed)
    noise = bsrgan.add_Gaussian_noise(flat, 20, 20) - 0.5
    assert np.array_equal(noise[..., 0], noise[..., 1]) and np.array_equal(noise[..., 0], noise[..., 2])
    np.testing.assert_allclose(noise[..., 0].std(), 20 / 255, rtol=0.03)

    mixed_seed = first_draw_seeds(lambda u: 0.4 <= u <= 0.6)
    seeded(mixed_seed)
    noise = (bsrgan.add_Gaussian_noise(flat, 2, 25) - 0.5).reshape(-1, 3)
    assert (noise.std(axis=0) <= 25 / 255 * 1.05).all()  # covariance |L² Uᵀ D U| has entries <= L²

    seeded(0)
    clipped = bsrgan.add_Gaussian_noise(np.zeros((8, 8, 3), dtype=np.float32), 25, 25)
    assert clipped.min() == 0.0 and clipped.max() <= 1.0


def test_speckle_and_poisson_noise_contracts() -> None:
    seeded(1)
    black = bsrgan.add_speckle_noise(np.zeros((16, 16, 3), dtype=np.float32))
    assert np.array_equal(black, np.zeros_like(black))  # multiplicative: zero stays zero
    image = util.uint2single(smooth_image(64, 64))
    for seed in range(4):
        seeded(seed)
        noisy = bsrgan_light.add_Poisson_noise(image)
        assert noisy.shape == image.shape and 0.0 <= noisy.min() and noisy.max() <= 1.0
        assert 0 < np.abs(noisy - image).mean() < 0.1


def test_jpeg_noise_changes_the_image_but_keeps_quality() -> None:
    coarse = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    image = cv_resize(coarse, 64, 64, 1)  # smooth colours
    compressed = jpeg_roundtrip(image, 95)
    assert compressed.dtype == np.float32 and compressed.shape == image.shape
    assert not np.array_equal(compressed, image)
    psnr = util.calculate_psnr(util.single2uint(compressed), util.single2uint(image))
    assert psnr > 35, psnr
    assert util.calculate_psnr(util.single2uint(jpeg_roundtrip(image, 30)), util.single2uint(image)) < psnr
    for seed in range(3):
        seeded(seed)
        light = bsrgan_light.add_JPEG_noise(image)  # quality 80 … 95
        assert util.calculate_psnr(util.single2uint(light), util.single2uint(image)) > 30


def test_blur_keeps_size_and_mean() -> None:
    image = util.uint2single(smooth_image(40, 40))
    for seed in range(6):
        seeded(seed)
        for module in MODULES.values():
            blurred = module.add_blur(image, sf=4)
            assert blurred.shape == image.shape and blurred.dtype == np.float32
            assert abs(blurred.mean() - image.mean()) < 0.01  # normalised kernel, mirrored borders


def test_add_resize_range() -> None:
    image = util.uint2single(smooth_image(40, 40))
    sides = set()
    for seed in range(30):
        seeded(seed)
        out = bsrgan.add_resize(image, sf=4)
        assert 0.0 <= out.min() and out.max() <= 1.0
        sides.add(out.shape[0])
    assert min(sides) >= 5 and max(sides) <= 80 and len(sides) > 5


# ---------------------------------------------------------------------------------------------------- kernels


def test_kernel_closed_forms() -> None:
    isotropic = bsrgan.anisotropic_Gaussian(ksize=9, theta=0.3, l1=2.25, l2=2.25)
    np.testing.assert_allclose(isotropic, bsrgan.fspecial_gaussian(9, 1.5), atol=1e-15)
    rotated = bsrgan.anisotropic_Gaussian(ksize=11, theta=np.pi / 2, l1=4.0, l2=1.0)
    np.testing.assert_allclose(rotated, bsrgan.anisotropic_Gaussian(ksize=11, theta=0.0, l1=4.0, l2=1.0).T, atol=1e-15)
    for kernel in (isotropic, rotated, bsrgan.analytic_kernel(bsrgan.fspecial_gaussian(5, 1.0))):
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    assert bsrgan.fspecial_laplacian(0.0).tolist() == [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    assert bsrgan.fspecial_laplacian(7.0).sum() == pytest.approx(0.0)
    delta = np.zeros((7, 7))
    delta[3, 3] = 1
    shifted = bsrgan.shift_pixel(delta, 3)  # shift by exactly one pixel up and left
    assert shifted[2, 2] == 1 and shifted.sum() == 1
    with pytest.raises(ValueError, match="fspecial.*'motion'"):
        bsrgan.fspecial("motion", 5)


def test_gen_kernel_is_centred_for_the_scale_factor() -> None:
    np.random.seed(0)
    kernel = bsrgan.gen_kernel(k_size=np.array([21, 21]), scale_factor=np.array([1, 1]), min_var=1.0, max_var=1.0)
    assert np.unravel_index(kernel.argmax(), kernel.shape) == (10, 10)
    np.testing.assert_allclose(kernel, bsrgan.fspecial_gaussian(21, 1.0), atol=1e-12)


def test_blur_with_a_delta_kernel_is_identity() -> None:
    x = torch.rand(2, 3, 6, 5)
    k = torch.zeros(2, 1, 3, 3)
    k[:, :, 1, 1] = 1
    torch.testing.assert_close(bsrgan.blur(x, k), x)


# ---------------------------------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_cv_resize_keeps_constants(mode: int) -> None:
    flat = np.full((9, 14, 3), 0.25, dtype=np.float32)
    for width, height in ((5, 4), (31, 20), (14, 9), (7, 13)):
        out = cv_resize(flat, width, height, mode)
        assert out.shape == (height, width, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, 0.25, atol=1e-7)


def test_cv_resize_closed_forms() -> None:
    image = np.random.default_rng(0).random((8, 12, 2)).astype(np.float32)
    blocks = image.reshape(4, 2, 6, 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(cv_resize(image, 6, 4, 3), blocks, atol=1e-7)
    np.testing.assert_allclose(cv_resize(image, 6, 4, 1), blocks, atol=1e-7)
    np.testing.assert_array_equal(cv_resize(image, 4, 4, 0), image[::2, ::3])
    np.testing.assert_array_equal(cv_resize(image, 24, 16, 3), image.repeat(2, axis=0).repeat(2, axis=1))
    with pytest.raises(TypeError, match="uint2single"):
        cv_resize(np.zeros((4, 4, 3), dtype=np.uint8), 2, 2)
    with pytest.raises(ValueError, match="too small"):
        cv_resize(image, 0, 3)


def test_matlab_resize_contracts() -> None:
    image = np.random.default_rng(0).random((10, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(util.imresize_np(image, 1), image, atol=1e-6)
    out = util.imresize_np(np.full((10, 9, 3), 0.7), 1 / 3)
    assert out.shape == (4, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.7, atol=1e-6)
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
    before = tensor.clone()
    np.testing.assert_allclose(util.imresize(tensor, 0.5).numpy().transpose(1, 2, 0), util.imresize_np(image, 0.5),
                               atol=1e-6)
    assert torch.equal(tensor, before)
    weights, _, _, _ = util.calculate_weights_indices(16, 4, 0.25, "cubic", 4, True)
    np.testing.assert_allclose(weights.sum(1).numpy(), 1, atol=1e-6)
    with pytest.raises(ValueError, match="cubic"):
        util.calculate_weights_indices(16, 4, 0.25, "lanczos", 4, True)


# ---------------------------------------------------------------------------------------------------- utils_image


def test_conversion_round_trips() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    single = util.uint2single(pixels)
    assert single.dtype == np.float32 and np.array_equal(util.single2uint(single), pixels)
    wide = pixels.astype(np.uint16) * 257
    assert np.array_equal(util.single2uint16(util.uint162single(wide)), wide)
    assert util.uint2tensor4(pixels).shape == (1, 3, 5, 7) and util.uint2tensor3(pixels[:, :, 0]).shape == (1, 5, 7)
    assert np.array_equal(util.tensor2uint(util.uint2tensor4(pixels)), pixels)
    np.testing.assert_array_equal(util.tensor2single(util.single2tensor4(single)), single)
    assert util.tensor2single3(torch.zeros(1, 1, 5, 7)).shape == (5, 7, 1)
    assert util.single2tensor3(single).shape == (3, 5, 7)
    volume = np.zeros((5, 7, 3, 2), dtype=np.float32)
    assert util.single2tensor5(volume).shape == (1, 3, 5, 7, 2) and util.single42tensor4(volume).shape == (3, 5, 7, 2)
    assert util.single32tensor5(volume[..., 0]).shape == (1, 1, 5, 7, 3)
    assert np.array_equal(util.tensor2img(util.uint2tensor3(pixels)), pixels[:, :, ::-1])  # BGR out


def test_augmentations_form_the_dihedral_group() -> None:
    image = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    results = [util.augment_img(image, mode) for mode in range(8)]
    assert len({r.tobytes() + bytes(r.shape) for r in results}) == 8
    as_np3 = {util.augment_img_np3(image, mode).tobytes() + bytes(util.augment_img_np3(image, mode).shape)
              for mode in range(8)}
    assert as_np3 == {r.tobytes() + bytes(r.shape) for r in results}
    tensor = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())
    for mode in range(8):
        expected = torch.from_numpy(results[mode].transpose(2, 0, 1).copy())
        assert torch.equal(util.augment_img_tensor4(tensor, mode)[0], expected)
        assert torch.equal(util.augment_img_tensor(tensor[0].float(), mode), expected.float())
    with pytest.raises(ValueError, match="0..7"):
        util.augment_img(image, 8)
    assert util.augment_imgs([image], hflip=False, rot=False)[0] is image


def test_colour_closed_forms() -> None:
    white, black = np.full((1, 1, 3), 255, dtype=np.uint8), np.zeros((1, 1, 3), dtype=np.uint8)
    assert util.rgb2ycbcr(white, only_y=False).ravel().tolist() == [235, 128, 128]
    assert util.rgb2ycbcr(black, only_y=False).ravel().tolist() == [16, 128, 128]
    image = np.random.default_rng(0).random((6, 5, 3)).astype(np.float32)
    before = image.copy()
    back = util.ycbcr2rgb(util.rgb2ycbcr(image, only_y=False))
    np.testing.assert_allclose(back, image, atol=1e-4)
    assert np.array_equal(image, before)  # inputs are not scaled in place
    np.testing.assert_allclose(util.bgr2ycbcr(image[:, :, ::-1]), util.rgb2ycbcr(image), atol=1e-6)
    gray = util.channel_convert(3, "gray", [np.full((2, 2, 3), 100, dtype=np.uint8)])[0]
    assert gray.shape == (2, 2, 1) and (gray == 100).all()
    assert util.channel_convert(3, "RGB", [image])[0] is image


def test_metric_closed_forms() -> None:
    a = np.random.default_rng(0).integers(0, 246, (20, 20, 3)).astype(np.uint8)
    assert util.calculate_psnr(a, a) == float("inf")
    assert util.calculate_psnr(a, a + 10) == pytest.approx(20 * np.log10(255 / 10))
    assert util.calculate_ssim(a, a) == pytest.approx(1.0)
    assert util.calculate_ssim(a, 255 - a) < 0.2
    with pytest.raises(ValueError, match="same dimensions"):
        util.calculate_psnr(a, a[:10])
    with pytest.raises(ValueError, match="calculate_ssim"):
        util.calculate_ssim(np.zeros((20, 20, 2)), np.zeros((20, 20, 2)))


def test_files_round_trip_and_listing(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    util.imsave(pixels, str(tmp_path / "a.png"))
    util.mkdir(str(tmp_path / "sub"))
    util.imwrite(pixels[:, :, :1], str(tmp_path / "sub" / "b.png"))
    assert np.array_equal(util.imread_uint(str(tmp_path / "a.png")), pixels)
    assert np.array_equal(util.read_img(str(tmp_path / "a.png")), util.uint2single(pixels[:, :, ::-1]))
    assert util.imread_uint(str(tmp_path / "sub" / "b.png")).shape == (10, 12, 3)
    util.imsave(pixels, str(tmp_path / "c.jpg"))  # at OpenCV's default quality, 95
    expected = util.single2uint(jpeg_roundtrip(util.uint2single(pixels), 95))
    assert np.array_equal(util.imread_uint(str(tmp_path / "c.jpg")), expected)
    (tmp_path / "notes.txt").write_text("x")
    assert util.get_image_paths(str(tmp_path)) == [str(tmp_path / n) for n in ("a.png", "c.jpg", "sub/b.png")]
    assert util.get_image_paths(None) is None
    assert util.is_image_file("x.JPEG") and not util.is_image_file("x.TIF")
    util.mkdir(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no image file"):
        util.get_image_paths(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="n_channels"):
        util.imread_uint(str(tmp_path / "a.png"), 2)
    with pytest.raises(TypeError, match="single2uint"):
        util.imsave(util.uint2single(pixels), str(tmp_path / "d.png"))


def test_folders_and_patches(tmp_path: Path) -> None:
    target = tmp_path / "run"
    util.mkdirs([str(target), str(tmp_path / "other")])
    (target / "marker").write_text("x")
    util.mkdir_and_rename(str(target))
    assert target.is_dir() and not (target / "marker").exists()
    assert len(list(tmp_path.glob("run_archived_*"))) == 1
    assert len(util.get_timestamp()) == 13
    big = np.zeros((30, 25, 3), dtype=np.uint8)
    patches = util.patches_from_image(big, p_size=10, p_overlap=2, p_max=20)
    assert len(patches) == 4 * 3 and all(p.shape == (10, 10, 3) for p in patches)
    assert util.patches_from_image(big, p_size=10, p_overlap=2, p_max=25) == [big]
    source = tmp_path / "source"
    source.mkdir()
    util.imsave(big, str(source / "img.png"))
    util.split_imageset(str(source), str(tmp_path / "other"), p_size=10, p_overlap=2, p_max=20)
    assert sorted(p.name for p in (tmp_path / "other").iterdir())[:2] == ["img_s0000.png", "img_s0001.png"]
    assert len(list((tmp_path / "other").iterdir())) == 12


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_plots_name_the_missing_dependency() -> None:
    with pytest.raises(ImportError, match="pip install matplotlib"):
        util.imshow(np.zeros((2, 2)))
    with pytest.raises(ImportError, match="pip install matplotlib"):
        util.surf(np.zeros((2, 2)))
