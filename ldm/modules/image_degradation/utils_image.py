"""Image utilities of the BSRGAN / KAIR code base, by topic in this package's modules (this module gathers them).

- files and folders (Pillow, no OpenCV): :mod:`.files`;
- uint8 / uint16 / float32 / torch conversions: :mod:`.conversions`;
- D4 flip/rotate augmentation: :mod:`.augment`; crops: :mod:`.crops`;
- BT.601 colour conversions: :mod:`.color`; PSNR / SSIM: :mod:`.metrics`;
- MATLAB's bicubic ``imresize``: :mod:`.matlab_resize`.
"""

from ldm.modules.image_degradation.augment import (
    augment_img,
    augment_img_np3,
    augment_img_tensor,
    augment_img_tensor4,
    augment_imgs,
)
from ldm.modules.image_degradation.color import bgr2ycbcr, channel_convert, rgb2ycbcr, ycbcr2rgb
from ldm.modules.image_degradation.conversions import (
    single2tensor3,
    single2tensor4,
    single2tensor5,
    single2uint,
    single2uint16,
    single32tensor5,
    single42tensor4,
    tensor2img,
    tensor2single,
    tensor2single3,
    tensor2uint,
    uint2single,
    uint2tensor3,
    uint2tensor4,
    uint162single,
)
from ldm.modules.image_degradation.crops import modcrop, shave
from ldm.modules.image_degradation.files import (
    IMG_EXTENSIONS,
    get_image_paths,
    get_timestamp,
    imread_uint,
    imsave,
    imshow,
    imssave,
    imwrite,
    is_image_file,
    mkdir,
    mkdir_and_rename,
    mkdirs,
    patches_from_image,
    read_img,
    split_imageset,
    surf,
)
from ldm.modules.image_degradation.matlab_resize import calculate_weights_indices, cubic, imresize, imresize_np
from ldm.modules.image_degradation.metrics import calculate_psnr, calculate_ssim, ssim

__all__ = [
    "IMG_EXTENSIONS", "augment_img", "augment_img_np3", "augment_img_tensor", "augment_img_tensor4", "augment_imgs",
    "bgr2ycbcr", "calculate_psnr", "calculate_ssim", "calculate_weights_indices", "channel_convert", "cubic",
    "get_image_paths", "get_timestamp", "imread_uint", "imresize", "imresize_np", "imsave", "imshow", "imssave",
    "imwrite", "is_image_file", "mkdir", "mkdir_and_rename", "mkdirs", "modcrop", "patches_from_image", "read_img",
    "rgb2ycbcr", "shave", "single2tensor3", "single2tensor4", "single2tensor5", "single2uint", "single2uint16",
    "single32tensor5", "single42tensor4", "split_imageset", "ssim", "surf", "tensor2img", "tensor2single",
    "tensor2single3", "tensor2uint", "uint162single", "uint2single", "uint2tensor3", "uint2tensor4", "ycbcr2rgb",
]
