#!/usr/bin/python3
"""Real photographs and PIL's preprocessing of them, for tests/unit/test_data_photos.cpp and the CLI's
preprocessing test.

  make_photos.py OUT_DIR

The photos are scikit-image's sample images (Debian's python3-skimage; scripts/setup.sh installs it),
copied byte for byte where they already are PNG/JPEG files, and re-encoded by PIL (baseline and
progressive JPEG, grey JPEG, palette PNG) or by the small PNG writer below (16-bit RGB, RGBA and grey
PNGs, which PIL cannot write) to cover the modes an ImageNet-like folder holds.

Writes
  OUT_DIR/folder/<class>/<file>       the images (ImageFolder layout)
  OUT_DIR/adm_<S>_rgb.npy             f32 [N, 3, S, S]: guided-diffusion's ImageDataset evaluation path
  OUT_DIR/adm_64_grey.npy             (convert("RGB" / "L"), center_crop_arr, v / 127.5 - 1) in ImageFolder
                                      order, for S = 64 and 256 (tests/reference/adm_preprocess.py)
  OUT_DIR/labels.npy                  i64 [N] class ids (sorted class names, as ImageFolder)
  OUT_DIR/decoded/<k>.npy             uint8 [H, W, C]: PIL's decoding of JPEG k (files.txt names them)
  OUT_DIR/random/cases.txt, out_<k>.npy
                                      random_crop_arr with given draws (image index, S, side, top, left):
                                      uint8 [S, S, 3]
"""
import os
import shutil
import struct
import sys
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from adm_preprocess import adm_input, random_crop_arr_at  # noqa: E402


def skimage_data_dir():
    import skimage

    return os.path.join(os.path.dirname(skimage.__file__), "data")


def write_png16(path, arr):
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) with no filtering."""
    arr = np.asarray(arr, dtype=np.uint16)
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = arr.astype(">u2").reshape(h, w * c)
    raw = b"".join(b"\0" + rows[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def main():
    out = sys.argv[1]
    src = skimage_data_dir()
    folder = os.path.join(out, "folder")
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(7)

    def put(cls, name):
        d = os.path.join(folder, cls)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, name)

    # The files as scikit-image ships them.
    for name in ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "camera.png", "logo.png",
                 "green_palette.png", "horse.png"]:
        shutil.copyfile(os.path.join(src, name), put("a_png", name))
    for name in ["rocket.jpg", "hubble_deep_field.jpg", "retina.jpg"]:
        shutil.copyfile(os.path.join(src, name), put("b_jpeg", name))
    # Re-encoded by PIL: progressive, 4:2:0 at another quality, grey.
    Image.open(os.path.join(src, "chelsea.png")).save(put("b_jpeg", "chelsea_progressive.jpg"), quality=90,
                                                      progressive=True)
    Image.open(os.path.join(src, "astronaut.png")).save(put("b_jpeg", "astronaut_q75.jpeg"), quality=75)
    Image.open(os.path.join(src, "coffee.png")).convert("L").save(put("b_jpeg", "coffee_grey.jpg"), quality=88)
    Image.open(os.path.join(src, "motorcycle_left.png")).quantize(colors=64).save(put("c_other", "moto_palette.png"))
    # 16-bit PNGs: RGB and RGBA keep their high byte in PIL; grey is clipped to 255 by convert().
    astro = np.asarray(Image.open(os.path.join(src, "astronaut.png")), dtype=np.uint16)
    write_png16(put("c_other", "astronaut_16bit.png"), astro * 257 + rng.integers(0, 257, size=astro.shape))
    logo = np.asarray(Image.open(os.path.join(src, "logo.png")), dtype=np.uint16)
    write_png16(put("c_other", "logo_16bit_rgba.png"), logo * 256 + rng.integers(0, 256, size=logo.shape))
    coins = np.asarray(Image.open(os.path.join(src, "coins.png")), dtype=np.uint16)
    write_png16(put("c_other", "coins_16bit_grey.png"), coins + coins // 2)  # 0..382: clipped above 255

    files = []
    for cls in sorted(os.listdir(folder)):
        for name in sorted(os.listdir(os.path.join(folder, cls))):
            files.append((cls, os.path.join(folder, cls, name)))
    classes = sorted({c for c, _ in files})
    np.save(os.path.join(out, "labels.npy"), np.array([classes.index(c) for c, _ in files], dtype=np.int64))
    for size in (64, 256):
        x = np.stack([adm_input(Image.open(p), size, "RGB") for _, p in files]).astype(np.float32)
        np.save(os.path.join(out, f"adm_{size}_rgb.npy"), x)
    x = np.stack([adm_input(Image.open(p), 64, "L") for _, p in files]).astype(np.float32)
    np.save(os.path.join(out, "adm_64_grey.npy"), x)

    ddir = os.path.join(out, "decoded")
    os.makedirs(ddir, exist_ok=True)
    with open(os.path.join(out, "files.txt"), "w") as f:
        k = 0
        for _, p in files:
            if p.endswith((".jpg", ".jpeg")):
                a = np.asarray(Image.open(p))
                np.save(os.path.join(ddir, f"{k}.npy"), a.reshape(a.shape[0], a.shape[1], -1))
                f.write(f"{k} {p}\n")
                k += 1

    # random_crop_arr with fixed draws: sizes in [ceil(S / 1.0), ceil(S / 0.8)], crops anywhere.
    rdir = os.path.join(out, "random")
    os.makedirs(rdir, exist_ok=True)
    with open(os.path.join(rdir, "cases.txt"), "w") as f:
        k = 0
        for idx, (_, p) in enumerate(files):
            if idx % 3:
                continue
            for size in (64, 256):
                side = int(rng.integers(size, int(np.ceil(size / 0.8)) + 1))
                img = Image.open(p).convert("RGB")
                _, (w, h) = random_crop_arr_at(img, size, side, 0, 0)
                top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
                arr, _ = random_crop_arr_at(img, size, side, top, left)
                np.save(os.path.join(rdir, f"out_{k}.npy"), np.ascontiguousarray(arr))
                f.write(f"{idx} {size} {side} {top} {left}\n")
                k += 1


if __name__ == "__main__":
    main()
