"""guided-diffusion's image preprocessing, the reference for diffprobe's `--preprocess adm`.

center_crop_arr and random_crop_arr are guided_diffusion/image_datasets.py (openai/guided-diffusion,
MIT licence), which the paper's code (diffssl's finetune.py -> load_data) uses; the body of each
is kept as it is there. random_crop_arr_at is random_crop_arr with its three random draws given,
so that diffprobe's counter-based draws can be checked against PIL for the same draws.
ImageDataset.__getitem__ converts to RGB before either and scales with arr / 127.5 - 1.
"""
import math
import random

import numpy as np
from PIL import Image


def center_crop_arr(pil_image, image_size):
    # We are not on a new enough PIL to support the `reducing_gap`
    # argument, which uses BOX downsampling at powers of two first.
    # Thus, we do it by hand to improve downsample quality.
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(
            tuple(x // 2 for x in pil_image.size), resample=Image.BOX
        )

    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )

    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def random_crop_arr(pil_image, image_size, min_crop_frac=0.8, max_crop_frac=1.0):
    min_smaller_dim_size = math.ceil(image_size / max_crop_frac)
    max_smaller_dim_size = math.ceil(image_size / min_crop_frac)
    smaller_dim_size = random.randrange(min_smaller_dim_size, max_smaller_dim_size + 1)

    # We are not on a new enough PIL to support the `reducing_gap`
    # argument, which uses BOX downsampling at powers of two first.
    # Thus, we do it by hand to improve downsample quality.
    while min(*pil_image.size) >= 2 * smaller_dim_size:
        pil_image = pil_image.resize(
            tuple(x // 2 for x in pil_image.size), resample=Image.BOX
        )

    scale = smaller_dim_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )

    arr = np.array(pil_image)
    crop_y = random.randrange(arr.shape[0] - image_size + 1)
    crop_x = random.randrange(arr.shape[1] - image_size + 1)
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def random_crop_arr_at(pil_image, image_size, smaller_dim_size, crop_y, crop_x):
    """random_crop_arr with its draws given; returns the crop and the resized size (w, h)."""
    while min(*pil_image.size) >= 2 * smaller_dim_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = smaller_dim_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size], pil_image.size


def adm_input(pil_image, image_size, mode="RGB"):
    """ImageDataset's evaluation path: convert, center_crop_arr, v / 127.5 - 1, as f32 [C, S, S]."""
    arr = center_crop_arr(pil_image.convert(mode), image_size)
    arr = arr.astype(np.float32) / 127.5 - 1
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
