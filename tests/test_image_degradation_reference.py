"""``ldm.modules.image_degradation`` against numbers produced by the original code (OpenCV, SciPy ``interp2d``).

The arrays in ``tests/refdata/image_degradation/`` were written by ``make_reference.py`` there (see its README):
deterministic functions on fixed inputs, and the random ones after ``random.seed(s); np.random.seed(s)``.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.modules.image_degradation import bsrgan, bsrgan_light
from ldm.modules.image_degradation import utils_image as util
from ldm.modules.image_degradation.cv_resize import cv_resize

REF = Path(__file__).parent / "refdata" / "image_degradation"


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(REF / f"{name}.npz") as data:
        return dict(data)


def seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def assert_close(actual: np.ndarray | torch.Tensor | float, expected: np.ndarray, atol: float) -> None:
    actual = actual.numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64), rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------------- kernels


def test_kernels_match_the_original() -> None:
    ref = load("kernels")
    cov = np.array([[2.0, 0.3], [0.3, 1.0]])
    cases = {
        "fspecial_gaussian_7_1.3": bsrgan.fspecial("gaussian", 7, 1.3),
        "fspecial_gaussian_25_0.4": bsrgan.fspecial_gaussian(25, 0.4),
        "fspecial_gaussian_6_2.0": bsrgan_light.fspecial_gaussian(6, 2.0),
        "fspecial_laplacian_0.2": bsrgan.fspecial("laplacian", 0.2),
        "fspecial_laplacian_1.7": bsrgan.fspecial_laplacian(1.7),
        "anisotropic_15_0.7_3_1.2": bsrgan.anisotropic_Gaussian(ksize=15, theta=0.7, l1=3.0, l2=1.2),
        "anisotropic_default": bsrgan.anisotropic_Gaussian(),
        "anisotropic_8_2.1_0.5_4": bsrgan_light.anisotropic_Gaussian(ksize=8, theta=2.1, l1=0.5, l2=4.0),
        "gm_blur_kernel_9": bsrgan.gm_blur_kernel(mean=[0.3, -0.2], cov=cov, size=9),
        "analytic_kernel": bsrgan.analytic_kernel(ref["analytic_kernel_in"]),
        "shift_pixel_sf4": bsrgan.shift_pixel(ref["shift_pixel_in"], 4),
        "shift_pixel_sf3_lower": bsrgan.shift_pixel(ref["shift_pixel_in"], 3, upper_left=False),
        "shift_pixel_3d_sf2": bsrgan.shift_pixel(ref["shift_pixel_3d_in"], 2),
    }
    for key, value in cases.items():
        assert_close(value, ref[key], atol=1e-15)  # measured: <= 1.2e-16


def test_gen_kernel_draws_like_the_original() -> None:
    ref = load("kernels")
    np.random.seed(5)
    assert_close(bsrgan.gen_kernel(), ref["gen_kernel_default"], atol=1e-15)
    np.random.seed(6)
    kernel = bsrgan.gen_kernel(k_size=np.array([11, 11]), scale_factor=np.array([2, 2]), min_var=0.5, max_var=4.0,
                               noise_level=0.2)
    assert_close(kernel, ref["gen_kernel_11_sf2_noise"], atol=1e-15)  # measured: <= 7e-18


def test_blur_matches_the_original() -> None:
    ref = load("kernels")
    out = bsrgan.blur(torch.from_numpy(ref["blur_x"]), torch.from_numpy(ref["blur_k"]))
    assert_close(out, ref["blur"], atol=1e-6)  # measured: 0


# ---------------------------------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("size", ["half", "third", "shrink", "enlarge", "mixed", "odd", "same"])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_cv_resize_matches_opencv(size: str, mode: int) -> None:
    ref = load("resize")
    expected = ref[f"cv_{size}_{mode}"]
    out = cv_resize(ref["image"], expected.shape[1], expected.shape[0], mode)
    # measured: nearest exact, area <= 1 ulp (1.2e-7), linear / cubic <= 1.1e-6 from OpenCV's default IPP path
    # (and <= 2 ulps from OpenCV's own C code with IPP off)
    assert_close(out, expected, atol={0: 0, 3: 2e-7}.get(mode, 2e-6))


def test_cv_resize_gray_matches_opencv() -> None:
    ref = load("resize")
    gray = ref["image"][:, :, 0]
    assert_close(cv_resize(gray, 7, 10, 3), ref["cv_gray_shrink_3"], atol=0)
    assert_close(cv_resize(gray, 29, 41, 2), ref["cv_gray_enlarge_2"], atol=2e-6)


def test_add_sharpening_matches_the_original() -> None:
    ref = load("resize")
    assert_close(bsrgan.add_sharpening(ref["sharpen_in"]), ref["sharpen"], atol=1e-6)  # measured 1.2e-7
    out = bsrgan_light.add_sharpening(ref["sharpen_in"], weight=1.0, radius=10, threshold=5)
    assert_close(out, ref["sharpen_w1_r10_t5"], atol=1e-6)  # measured 1.4e-7


def test_matlab_imresize_matches_the_original() -> None:
    ref = load("utils_image")
    image = ref["image"]
    chw = torch.from_numpy(image.transpose(2, 0, 1).copy())
    cases = {
        "imresize_np_quarter": util.imresize_np(image, 1 / 4),
        "imresize_np_half_noaa": util.imresize_np(image, 1 / 2, antialiasing=False),
        "imresize_np_up": util.imresize_np(image, 1.7),
        "imresize_np_third": util.imresize_np(image, 1 / 3),
        "imresize_np_2d": util.imresize_np(image[:, :, 1], 0.6),
        "imresize_np_float64": util.imresize_np(image.astype(np.float64), 0.5),
        "imresize_third": util.imresize(chw, 1 / 3),
        "imresize_up_noaa": util.imresize(chw, 2.5, antialiasing=False),
        "imresize_2d": util.imresize(chw[0], 0.5),
    }
    for key, value in cases.items():
        assert_close(value, ref[key], atol=1e-6)  # measured: <= 1.2e-7 (float32 summation order)
    assert_close(util.cubic(torch.from_numpy(ref["cubic_x"])), ref["cubic"], atol=0)


@pytest.mark.parametrize("lengths", [(10, 5, 0.5), (7, 18, 2.5), (20, 7, 1 / 3)])
@pytest.mark.parametrize("antialiasing", [True, False])
def test_calculate_weights_indices_matches_the_original(lengths: tuple[int, int, float], antialiasing: bool) -> None:
    ref = load("utils_image")
    key = f"cwi_{lengths[0]}_{lengths[1]}_{antialiasing}"
    weights, indices, start, end = util.calculate_weights_indices(*lengths, "cubic", 4, antialiasing)
    assert_close(weights, ref[f"{key}_weights"], atol=0)
    assert_close(indices, ref[f"{key}_indices"], atol=0)
    assert [start, end] == ref[f"{key}_sym"].tolist()


def test_classical_degradations_match_the_original() -> None:
    ref = load("noise")
    image, kernel = ref["image"], ref["kernel"]
    assert_close(bsrgan.bicubic_degradation(image, sf=2), ref["bicubic_degradation"], atol=1e-6)
    assert_close(bsrgan.srmd_degradation(image, kernel, sf=2), ref["srmd_degradation"], atol=1e-6)
    assert_close(bsrgan_light.dpsr_degradation(image, kernel, sf=2), ref["dpsr_degradation"], atol=1e-6)
    assert_close(bsrgan.classical_degradation(image, kernel, sf=3), ref["classical_degradation"], atol=0)
    assert_close(bsrgan.modcrop_np(image, 5), ref["modcrop_np"], atol=0)


# ---------------------------------------------------------------------------------------------------- utils_image


def test_metrics_match_the_original() -> None:
    ref = load("utils_image")
    a, b = ref["metric_a"], ref["metric_b"]
    assert util.calculate_psnr(a, b) == pytest.approx(float(ref["psnr"]), abs=1e-12)
    assert util.calculate_psnr(a, b, border=2) == pytest.approx(float(ref["psnr_border2"]), abs=1e-12)
    assert util.calculate_ssim(a, b) == pytest.approx(float(ref["ssim"]), abs=1e-12)  # measured <= 7e-16
    assert util.calculate_ssim(a, b, border=1) == pytest.approx(float(ref["ssim_border1"]), abs=1e-12)
    assert util.calculate_ssim(a[:, :, 0], b[:, :, 0]) == pytest.approx(float(ref["ssim_gray"]), abs=1e-12)
    assert util.calculate_ssim(a[:, :, :1], b[:, :, :1]) == pytest.approx(float(ref["ssim_1ch"]), abs=1e-12)
    assert util.ssim(a[:, :, 2], b[:, :, 2]) == pytest.approx(float(ref["ssim_fn"]), abs=1e-12)


def test_colour_conversions_match_the_original() -> None:
    ref = load("utils_image")
    a, image = ref["metric_a"], ref["image"]
    exact = {
        "rgb2ycbcr_u8_y": util.rgb2ycbcr(a),
        "rgb2ycbcr_u8": util.rgb2ycbcr(a, only_y=False),
        "bgr2ycbcr_u8_y": util.bgr2ycbcr(a),
        "bgr2ycbcr_u8": util.bgr2ycbcr(a, only_y=False),
        "ycbcr2rgb_u8": util.ycbcr2rgb(util.rgb2ycbcr(a, only_y=False)),
        "gray_u8": util.channel_convert(3, "gray", [a])[0],
        "y_u8": util.channel_convert(3, "y", [a])[0],
        "rgb_from_gray": util.channel_convert(1, "RGB", [a[:, :, :1]])[0],
    }
    for key, value in exact.items():
        assert_close(value, ref[key], atol=0)
    close = {
        "rgb2ycbcr_f32_y": util.rgb2ycbcr(image),
        "rgb2ycbcr_f32": util.rgb2ycbcr(image, only_y=False),
        "bgr2ycbcr_f32": util.bgr2ycbcr(image, only_y=False),
        "ycbcr2rgb_f32": util.ycbcr2rgb(image),
        "gray_f32": util.channel_convert(3, "gray", [image])[0],
    }
    for key, value in close.items():
        assert_close(value, ref[key], atol=1e-7)  # measured: 0, and 6e-8 for gray


def test_augmentations_and_conversions_match_the_original() -> None:
    ref = load("utils_image")
    small = ref["small"]
    batch = torch.from_numpy(small.transpose(2, 0, 1)[None].copy())
    for mode in range(8):
        assert_close(util.augment_img(small, mode), ref[f"augment_img_{mode}"], atol=0)
        assert_close(util.augment_img_np3(small, mode), ref[f"augment_img_np3_{mode}"], atol=0)
        assert_close(util.augment_img_tensor4(batch, mode), ref[f"augment_img_tensor4_{mode}"], atol=0)
        assert_close(util.augment_img_tensor(batch[0], mode), ref[f"augment_img_tensor_{mode}"], atol=0)
        assert_close(util.augment_img_tensor(batch.repeat(2, 1, 1, 1), mode), ref[f"augment_img_tensor_4d_{mode}"], 0)
    random.seed(7)
    assert_close(np.stack(util.augment_imgs([ref["image"], ref["image"] * 2])), ref["augment_imgs"], atol=0)
    tensors = torch.from_numpy(ref["tensor2img_in"])
    assert_close(util.tensor2img(tensors), ref["tensor2img_4d"], atol=0)
    assert_close(util.tensor2img(tensors[1]), ref["tensor2img_3d"], atol=0)
    out = util.tensor2img(tensors[2, 0], out_type=np.float32, min_max=(-0.2, 1.2))
    assert_close(out, ref["tensor2img_2d_f32"], atol=0)
    assert_close(util.tensor2uint(tensors[3:4]), ref["tensor2uint"], atol=0)
    assert_close(util.single2uint16(ref["image"]), ref["single2uint16"], atol=0)
    assert_close(util.modcrop(ref["image"], 3), ref["modcrop"], atol=0)
    assert_close(util.shave(ref["image"], 2), ref["shave"], atol=0)


@pytest.mark.parametrize("name", ["gray.png", "gray16.png", "palette.png", "rgb.bmp", "rgb.jpg", "rgb.png", "rgba.png"])
def test_image_readers_match_opencv(name: str) -> None:
    ref = load("files")
    path = str(REF / "files" / name)
    assert_close(util.imread_uint(path, 3), ref[f"{name}_uint3"], atol=0)
    assert_close(util.imread_uint(path, 1), ref[f"{name}_uint1"], atol=0)
    assert_close(util.read_img(path), ref[f"{name}_read_img"], atol=0)


# ---------------------------------------------------------------------------------------------------- random steps


@pytest.mark.parametrize("seed", range(6))
def test_random_steps_draw_like_the_original(seed: int) -> None:
    ref = load("noise")
    image = ref["image"]
    steps = {
        "gaussian": bsrgan.add_Gaussian_noise,
        "speckle": lambda x: bsrgan.add_speckle_noise(x, noise_level1=4, noise_level2=30),
        "poisson": bsrgan.add_Poisson_noise,
        "blur": lambda x: bsrgan.add_blur(x, sf=4),
        "blur_light": lambda x: bsrgan_light.add_blur(x, sf=2),
        "jpeg": bsrgan.add_JPEG_noise,
        "jpeg_light": bsrgan_light.add_JPEG_noise,
    }
    for key, step in steps.items():
        seeded(seed)
        assert_close(step(image.copy()), ref[f"{key}_{seed}"], atol=0)  # measured: identical (JPEG: same libjpeg)
    seeded(seed)
    assert_close(bsrgan.add_resize(image.copy(), sf=4), ref[f"resize_{seed}"], atol=2e-6)  # measured <= 1.3e-6


def test_random_crop_draws_like_the_original() -> None:
    ref = load("noise")
    seeded(3)
    lq, hq = bsrgan.random_crop(ref["image"][:10, :9], ref["crop_in"], sf=4, lq_patchsize=6)
    assert_close(lq, ref["crop_lq"], atol=0)
    assert_close(hq, ref["crop_hq"], atol=0)


def assert_mostly_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """uint8 / float images equal up to rare one-level flips (measured here: identical)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    levels = np.abs(actual.astype(np.float64) - expected) * (1 if actual.dtype == np.uint8 else 255)
    assert np.mean(levels > 1e-3) <= 0.02 and levels.max() <= 4, (np.mean(levels > 1e-3), levels.max())


@pytest.mark.parametrize("seed", range(8))
def test_pipelines_reproduce_the_original_under_the_same_seeds(seed: int) -> None:
    ref = load("pipeline")
    image = ref["image"]
    for name, module in (("full", bsrgan), ("light", bsrgan_light)):
        for sf in (2, 4):
            seeded(seed)
            out = module.degradation_bsrgan_variant(image.copy(), sf=sf)
            assert_mostly_equal(out["image"], ref[f"variant_{name}_sf{sf}_{seed}"])
        seeded(seed)
        lq, hq = module.degradation_bsrgan(image.astype(np.float32) / 255.0, sf=4, lq_patchsize=4)
        assert_mostly_equal(lq, ref[f"pair_{name}_{seed}_lq"])
        assert_close(hq, ref[f"pair_{name}_{seed}_hq"], atol=0)
    seeded(seed)
    lq, hq = bsrgan.degradation_bsrgan_plus(image.astype(np.float32) / 255.0, sf=4, lq_patchsize=4)
    assert_mostly_equal(lq, ref[f"plus_{seed}_lq"])
    assert_close(hq, ref[f"plus_{seed}_hq"], atol=1e-6)  # the sharpened target; measured 1.8e-7
