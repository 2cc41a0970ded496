"""Write the reference arrays for tests/test_image_degradation*.py by running the ORIGINAL code (not ours).

Run outside the repository's venv, in a scratch venv with OpenCV (see README.md):
    /tmp/degref/bin/python tests/refdata/image_degradation/make_reference.py /work/ref/CompVis+stable-diffusion
"""

from __future__ import annotations

import random
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent


def load_original(root: str) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """Import the original package from ``root``; stub the unused ``albumentations`` import, restore ``scipy.finfo``."""
    import scipy

    sys.path.insert(0, root)
    sys.modules.setdefault("albumentations", types.ModuleType("albumentations"))
    scipy.finfo = np.finfo
    from ldm.modules.image_degradation import bsrgan, bsrgan_light, utils_image

    return bsrgan, bsrgan_light, utils_image


def seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def kernels(bsr: types.ModuleType) -> dict[str, np.ndarray]:
    import torch

    out: dict[str, np.ndarray] = {}
    out["fspecial_gaussian_7_1.3"] = bsr.fspecial("gaussian", 7, 1.3)
    out["fspecial_gaussian_25_0.4"] = bsr.fspecial_gaussian(25, 0.4)
    out["fspecial_gaussian_6_2.0"] = bsr.fspecial_gaussian(6, 2.0)
    out["fspecial_laplacian_0.2"] = bsr.fspecial("laplacian", 0.2)
    out["fspecial_laplacian_1.7"] = bsr.fspecial_laplacian(1.7)
    out["anisotropic_15_0.7_3_1.2"] = bsr.anisotropic_Gaussian(ksize=15, theta=0.7, l1=3.0, l2=1.2)
    out["anisotropic_default"] = bsr.anisotropic_Gaussian()
    out["anisotropic_8_2.1_0.5_4"] = bsr.anisotropic_Gaussian(ksize=8, theta=2.1, l1=0.5, l2=4.0)
    out["gm_blur_kernel_9"] = bsr.gm_blur_kernel(mean=[0.3, -0.2], cov=np.array([[2.0, 0.3], [0.3, 1.0]]), size=9)
    out["analytic_kernel_in"] = bsr.fspecial_gaussian(5, 1.0)
    out["analytic_kernel"] = bsr.analytic_kernel(out["analytic_kernel_in"])
    base = bsr.fspecial_gaussian(25, 1.1)
    out["shift_pixel_in"] = base
    out["shift_pixel_sf4"] = bsr.shift_pixel(base.copy(), 4)
    out["shift_pixel_sf3_lower"] = bsr.shift_pixel(base.copy(), 3, upper_left=False)
    image = np.random.default_rng(1).random((9, 7, 2))
    out["shift_pixel_3d_in"] = image
    out["shift_pixel_3d_sf2"] = bsr.shift_pixel(image.copy(), 2)
    np.random.seed(5)
    out["gen_kernel_default"] = bsr.gen_kernel()
    np.random.seed(6)
    out["gen_kernel_11_sf2_noise"] = bsr.gen_kernel(
        k_size=np.array([11, 11]), scale_factor=np.array([2, 2]), min_var=0.5, max_var=4.0, noise_level=0.2
    )
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, 10, 9)).astype(np.float32)
    k = rng.random((2, 1, 5, 5)).astype(np.float32)
    out["blur_x"], out["blur_k"] = x, k
    out["blur"] = bsr.blur(torch.from_numpy(x), torch.from_numpy(k)).numpy()
    return out


def resizes(bsr: types.ModuleType) -> dict[str, np.ndarray]:
    import cv2

    out: dict[str, np.ndarray] = {}
    image = np.random.default_rng(3).random((24, 18, 3)).astype(np.float32)
    out["image"] = image
    sizes = {"half": (9, 12), "third": (6, 8), "shrink": (7, 10), "enlarge": (29, 41), "mixed": (18, 30),
             "odd": (13, 5), "same": (18, 24)}
    for name, size in sizes.items():
        for mode in (0, 1, 2, 3):
            out[f"cv_{name}_{mode}"] = cv2.resize(image, size, interpolation=mode)
    gray = image[:, :, 0].copy()
    out["cv_gray_shrink_3"] = cv2.resize(gray, (7, 10), interpolation=3)
    out["cv_gray_enlarge_2"] = cv2.resize(gray, (29, 41), interpolation=2)
    out["sharpen_in"] = image
    out["sharpen"] = bsr.add_sharpening(image.copy())
    out["sharpen_w1_r10_t5"] = bsr.add_sharpening(image.copy(), weight=1.0, radius=10, threshold=5)
    return out


def utils(util: types.ModuleType) -> dict[str, np.ndarray]:
    import torch

    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(4)
    image = rng.random((20, 14, 3)).astype(np.float32)
    out["image"] = image
    out["imresize_np_quarter"] = util.imresize_np(image, 1 / 4)
    out["imresize_np_half_noaa"] = util.imresize_np(image, 1 / 2, antialiasing=False)
    out["imresize_np_up"] = util.imresize_np(image, 1.7)
    out["imresize_np_third"] = util.imresize_np(image, 1 / 3)
    out["imresize_np_2d"] = util.imresize_np(image[:, :, 1].copy(), 0.6)
    out["imresize_np_float64"] = util.imresize_np(image.astype(np.float64), 0.5)
    chw = torch.from_numpy(image.transpose(2, 0, 1).copy())
    out["imresize_third"] = util.imresize(chw.clone(), 1 / 3).numpy()
    out["imresize_up_noaa"] = util.imresize(chw.clone(), 2.5, antialiasing=False).numpy()
    out["imresize_2d"] = util.imresize(chw[0].clone(), 0.5).numpy()
    for name, args in {"10_5": (10, 5, 0.5), "7_18": (7, 18, 2.5), "20_7": (20, 7, 1 / 3)}.items():
        for aa in (True, False):
            weights, indices, start, end = util.calculate_weights_indices(*args, "cubic", 4, aa)
            out[f"cwi_{name}_{aa}_weights"] = weights.numpy()
            out[f"cwi_{name}_{aa}_indices"] = indices.numpy()
            out[f"cwi_{name}_{aa}_sym"] = np.array([start, end])
    grid = torch.linspace(-3, 3, 61)
    out["cubic_x"] = grid.numpy()
    out["cubic"] = util.cubic(grid).numpy()

    a = (rng.random((16, 13, 3)) * 255).round().astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    out["metric_a"], out["metric_b"] = a, b
    out["psnr"] = np.array(util.calculate_psnr(a, b))
    out["psnr_border2"] = np.array(util.calculate_psnr(a, b, border=2))
    out["ssim"] = np.array(util.calculate_ssim(a, b))
    out["ssim_border1"] = np.array(util.calculate_ssim(a, b, border=1))
    out["ssim_gray"] = np.array(util.calculate_ssim(a[:, :, 0], b[:, :, 0]))
    out["ssim_1ch"] = np.array(util.calculate_ssim(a[:, :, :1], b[:, :, :1]))
    out["ssim_fn"] = np.array(util.ssim(a[:, :, 2], b[:, :, 2]))

    out["rgb2ycbcr_u8_y"] = util.rgb2ycbcr(a.copy())
    out["rgb2ycbcr_u8"] = util.rgb2ycbcr(a.copy(), only_y=False)
    out["rgb2ycbcr_f32_y"] = util.rgb2ycbcr(image.copy())
    out["rgb2ycbcr_f32"] = util.rgb2ycbcr(image.copy(), only_y=False)
    out["bgr2ycbcr_u8_y"] = util.bgr2ycbcr(a.copy())
    out["bgr2ycbcr_u8"] = util.bgr2ycbcr(a.copy(), only_y=False)
    out["bgr2ycbcr_f32"] = util.bgr2ycbcr(image.copy(), only_y=False)
    out["ycbcr2rgb_u8"] = util.ycbcr2rgb(util.rgb2ycbcr(a.copy(), only_y=False))
    out["ycbcr2rgb_f32"] = util.ycbcr2rgb(image.copy())
    out["gray_u8"] = util.channel_convert(3, "gray", [a.copy()])[0]
    out["gray_f32"] = util.channel_convert(3, "gray", [image.copy()])[0]
    out["y_u8"] = util.channel_convert(3, "y", [a.copy()])[0]
    out["rgb_from_gray"] = util.channel_convert(1, "RGB", [a[:, :, :1].copy()])[0]

    small = rng.random((3, 4, 2)).astype(np.float32)
    out["small"] = small
    for mode in range(8):
        out[f"augment_img_{mode}"] = np.ascontiguousarray(util.augment_img(small, mode))
        out[f"augment_img_np3_{mode}"] = np.ascontiguousarray(util.augment_img_np3(small, mode))
        t4 = torch.from_numpy(small.transpose(2, 0, 1)[None].copy())
        out[f"augment_img_tensor4_{mode}"] = util.augment_img_tensor4(t4, mode).numpy()
        out[f"augment_img_tensor_{mode}"] = util.augment_img_tensor(t4[0], mode).numpy()
        out[f"augment_img_tensor_4d_{mode}"] = util.augment_img_tensor(t4.repeat(2, 1, 1, 1), mode).numpy()
    random.seed(7)
    out["augment_imgs"] = np.stack([np.ascontiguousarray(x) for x in util.augment_imgs([image, image * 2])])

    batch = torch.from_numpy(rng.random((5, 3, 4, 6)).astype(np.float32) * 1.4 - 0.2)
    out["tensor2img_in"] = batch.numpy()
    out["tensor2img_4d"] = util.tensor2img(batch)
    out["tensor2img_3d"] = util.tensor2img(batch[1])
    out["tensor2img_2d_f32"] = util.tensor2img(batch[2, 0], out_type=np.float32, min_max=(-0.2, 1.2))
    out["tensor2uint"] = util.tensor2uint(batch[3:4])
    out["single2uint16"] = util.single2uint16(image)
    out["modcrop"] = util.modcrop(image, 3)
    out["shave"] = util.shave(image, 2)
    return out


def noises(bsr: types.ModuleType, light: types.ModuleType, util: types.ModuleType) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(5)
    image = rng.random((16, 14, 3)).astype(np.float32)
    out["image"] = image
    for seed in range(6):
        seeded(seed)
        out[f"gaussian_{seed}"] = bsr.add_Gaussian_noise(image.copy())
        seeded(seed)
        out[f"speckle_{seed}"] = bsr.add_speckle_noise(image.copy(), noise_level1=4, noise_level2=30)
        seeded(seed)
        out[f"poisson_{seed}"] = bsr.add_Poisson_noise(image.copy())
        seeded(seed)
        out[f"blur_{seed}"] = bsr.add_blur(image.copy(), sf=4)
        seeded(seed)
        out[f"blur_light_{seed}"] = light.add_blur(image.copy(), sf=2)
        seeded(seed)
        out[f"resize_{seed}"] = bsr.add_resize(image.copy(), sf=4)
        seeded(seed)
        out[f"jpeg_{seed}"] = bsr.add_JPEG_noise(image.copy())
        seeded(seed)
        out[f"jpeg_light_{seed}"] = light.add_JPEG_noise(image.copy())
    hq = rng.random((40, 36, 3)).astype(np.float32)
    out["crop_in"] = hq
    seeded(3)
    out["crop_lq"], out["crop_hq"] = bsr.random_crop(image[:10, :9], hq, sf=4, lq_patchsize=6)
    k = bsr.fspecial_gaussian(5, 1.2)
    out["kernel"] = k
    out["bicubic_degradation"] = bsr.bicubic_degradation(image, sf=2)
    out["srmd_degradation"] = bsr.srmd_degradation(image, k, sf=2)
    out["dpsr_degradation"] = bsr.dpsr_degradation(image, k, sf=2)
    out["classical_degradation"] = bsr.classical_degradation(image, k, sf=3)
    out["modcrop_np"] = bsr.modcrop_np(image, 5)
    return out


def pipelines(bsr: types.ModuleType, light: types.ModuleType) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(6)
    smooth = rng.random((8, 8, 3))
    image = np.kron(smooth, np.ones((8, 8, 1)))
    image = (np.clip(image + 0.1 * rng.standard_normal(image.shape), 0, 1) * 255).round().astype(np.uint8)
    out["image"] = image
    for seed in range(8):
        for name, module in (("full", bsr), ("light", light)):
            for sf in (2, 4):
                seeded(seed)
                out[f"variant_{name}_sf{sf}_{seed}"] = module.degradation_bsrgan_variant(image.copy(), sf=sf)["image"]
            seeded(seed)
            lq, hq = module.degradation_bsrgan(image.astype(np.float32) / 255.0, sf=4, lq_patchsize=4)
            out[f"pair_{name}_{seed}_lq"], out[f"pair_{name}_{seed}_hq"] = lq, hq
        seeded(seed)
        lq, hq = bsr.degradation_bsrgan_plus(image.astype(np.float32) / 255.0, sf=4, lq_patchsize=4)
        out[f"plus_{seed}_lq"], out[f"plus_{seed}_hq"] = lq, hq
    return out


def files(util: types.ModuleType) -> dict[str, np.ndarray]:
    """Small image files written with Pillow into ``files/``, read back by the original's OpenCV readers."""
    from PIL import Image

    folder = OUT / "files"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(7)
    rgba = (rng.random((10, 12, 4)) * 255).round().astype(np.uint8)
    Image.fromarray(rgba[:, :, :3]).save(folder / "rgb.png")
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(rgba[:, :, 0]).save(folder / "gray.png")
    Image.fromarray(rgba[:, :, 1].astype(np.uint16) * 257 + 3).save(folder / "gray16.png")
    Image.fromarray(rgba[:, :, :3]).save(folder / "rgb.jpg", quality=90)
    Image.fromarray(rgba[:, :, :3]).save(folder / "rgb.bmp")
    Image.fromarray(rgba[:, :, :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    out: dict[str, np.ndarray] = {}
    for path in sorted(folder.iterdir()):
        out[f"{path.name}_uint3"] = util.imread_uint(str(path), 3)
        out[f"{path.name}_uint1"] = util.imread_uint(str(path), 1)
        out[f"{path.name}_read_img"] = util.read_img(str(path))
    return out


def main(root: str) -> None:
    bsr, light, util = load_original(root)
    np.savez_compressed(OUT / "kernels.npz", **kernels(bsr))
    np.savez_compressed(OUT / "resize.npz", **resizes(bsr))
    np.savez_compressed(OUT / "utils_image.npz", **utils(util))
    np.savez_compressed(OUT / "noise.npz", **noises(bsr, light, util))
    np.savez_compressed(OUT / "pipeline.npz", **pipelines(bsr, light))
    np.savez_compressed(OUT / "files.npz", **files(util))


if __name__ == "__main__":
    main(sys.argv[1])
