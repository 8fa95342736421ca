#!/usr/bin/env python3
"""Reference images and PIL-computed expectations for the data tests (tests/unit/test_data_pil.cpp).

  python3 make_images.py OUT_DIR SIZE

writes
  OUT_DIR/folder/<class>/<image>   PNG (L, LA, RGB, RGBA, P + tRNS, 1-bit, 16-bit grey) and JPEG
                                   (RGB, L, CMYK) images of odd sizes, some far larger than SIZE
  OUT_DIR/expected_rgb.npy         f32 [N, 3, SIZE, SIZE]: torchvision's eval preprocessing done with
  OUT_DIR/expected_grey.npy        PIL (convert, Resize(SIZE, BICUBIC), CenterCrop(SIZE), v/127.5-1)
                                   in ImageFolder order; 16-bit images are left out (see below)
  OUT_DIR/expected_adm_rgb.npy     f32 [M, 3, SIZE, SIZE]: guided-diffusion's center_crop_arr (the paper's
  OUT_DIR/expected_adm_grey.npy    preprocessing, tests/reference/adm_preprocess.py) of every image,
                                   16-bit ones included (PIL reads them its way; diffprobe's adm mode too)
  OUT_DIR/decoded/<k>.npy          uint8 [H, W, 3] of image k as PIL decodes it and converts to RGB
  OUT_DIR/resize/in_<k>.npy, out_<k>.npy, cases.txt
                                   uint8 [H, W, C] inputs and PIL Image.resize(BICUBIC) outputs
  OUT_DIR/box/...                  the same for Image.resize(BOX)
Exit status 3 when PIL is missing (the test then skips).

torchvision itself is not needed: its Resize/CenterCrop on PIL images are these PIL calls.
16-bit PNGs are kept out of the expectations: PIL clamps 16-bit grey to 255 when converting
(I;16 -> L), while diffprobe keeps the full 16-bit range (documented difference).
"""
import os
import sys

import numpy as np

try:
    from PIL import Image
except ImportError:
    sys.exit(3)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from adm_preprocess import adm_input  # noqa: E402


def tv_eval(img, size, mode):
    img = img.convert(mode)
    w, h = img.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    img = img.resize((nw, nh), Image.BICUBIC)
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def smooth_noise(rng, h, w, c):
    # Random content with edges and gradients: exercises clipping and every filter tap.
    base = rng.integers(0, 256, size=(h, w, c)).astype(np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    grad = (xx * 255.0 / max(w - 1, 1))[..., None]
    return np.clip(0.5 * base + 0.5 * grad, 0, 255).astype(np.uint8)


def main():
    out, size = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(1234)
    folder = os.path.join(out, "folder")
    files = []  # (class, name, PIL image to save, save kwargs, include in expectations)

    def add(cls, name, img, include=True, **kw):
        files.append((cls, name, img, kw, include))

    add("a_rgb", "x01.png", Image.fromarray(smooth_noise(rng, 37, 23, 3), "RGB"))
    add("a_rgb", "x02.PNG", Image.fromarray(smooth_noise(rng, 300, 200, 3), "RGB"))
    add("a_rgb", "x03.jpg", Image.fromarray(smooth_noise(rng, 64, 81, 3), "RGB"), quality=90)
    add("a_rgb", "x04.jpeg", Image.fromarray(smooth_noise(rng, size, size, 3), "RGB"), quality=75, subsampling=0)
    add("b_grey", "g01.png", Image.fromarray(smooth_noise(rng, 45, 45, 1)[..., 0], "L"))
    add("b_grey", "g02.jpg", Image.fromarray(smooth_noise(rng, 33, 70, 1)[..., 0], "L"), quality=85)
    add("b_grey", "g03.png", Image.fromarray(smooth_noise(rng, 19, 40, 2), "LA"))
    bits = (rng.integers(0, 2, size=(29, 31)) * 255).astype(np.uint8)
    add("b_grey", "g04.png", Image.fromarray(bits, "L").convert("1"))
    g16 = (rng.integers(0, 65536, size=(20, 24))).astype(np.uint16)
    add("b_grey", "g05_16bit.png", Image.fromarray(g16, "I;16"), include=False)
    g16_low = (rng.integers(0, 400, size=(70, 66))).astype(np.uint16)  # partly above 255: PIL clips
    add("b_grey", "g06_16bit.png", Image.fromarray(g16_low, "I;16"), include=False)
    add("c_alpha", "r01.png", Image.fromarray(smooth_noise(rng, 50, 41, 4), "RGBA"))
    pal = Image.fromarray(smooth_noise(rng, 40, 52, 3), "RGB").quantize(colors=17)
    pal.info["transparency"] = 3
    add("c_alpha", "r02.png", pal, transparency=3)
    cmyk = Image.fromarray(smooth_noise(rng, 30, 44, 4), "CMYK")
    add("c_alpha", "r03_cmyk.jpg", cmyk, quality=92)
    add("c_alpha", "notes.txt", None)  # ignored: not an image extension

    files.sort(key=lambda f: (f[0], f[1]))  # ImageFolder order: classes, then names (byte order)
    rgb, grey, decoded, adm_rgb, adm_grey = [], [], [], [], []
    for cls, name, img, kw, include in files:
        d = os.path.join(folder, cls)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name)
        if img is None:
            with open(path, "w") as f:
                f.write("not an image\n")
            continue
        img.save(path, **kw)
        adm_rgb.append(adm_input(Image.open(path), size, "RGB"))
        adm_grey.append(adm_input(Image.open(path), size, "L"))
        if include:
            back = Image.open(path)
            rgb.append(tv_eval(back, size, "RGB"))
            grey.append(tv_eval(back, size, "L"))
            decoded.append(np.asarray(back.convert("RGB"), dtype=np.uint8))
    np.save(os.path.join(out, "expected_rgb.npy"), np.stack(rgb).astype(np.float32))
    np.save(os.path.join(out, "expected_grey.npy"), np.stack(grey).astype(np.float32))
    np.save(os.path.join(out, "expected_adm_rgb.npy"), np.stack(adm_rgb).astype(np.float32))
    np.save(os.path.join(out, "expected_adm_grey.npy"), np.stack(adm_grey).astype(np.float32))
    os.makedirs(os.path.join(out, "decoded"), exist_ok=True)
    for k, a in enumerate(decoded):
        np.save(os.path.join(out, "decoded", f"{k}.npy"), a)

    # Direct resize cases: (w, h, channels) -> (W, H).
    cases = [(37, 23, 3, 16, 16), (300, 200, 3, 48, 32), (64, 64, 1, 64, 17), (17, 9, 1, 60, 31),
             (100, 3, 3, 7, 1), (5, 120, 1, 5, 33), (256, 256, 3, 224, 224), (33, 47, 1, 33, 47)]
    rdir = os.path.join(out, "resize")
    os.makedirs(rdir, exist_ok=True)
    with open(os.path.join(rdir, "cases.txt"), "w") as f:
        for k, (w, h, c, W, H) in enumerate(cases):
            a = rng.integers(0, 256, size=(h, w, c)).astype(np.uint8)  # raw noise: maximal clipping
            img = Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB")
            r = np.asarray(img.resize((W, H), Image.BICUBIC), dtype=np.uint8)
            np.save(os.path.join(rdir, f"in_{k}.npy"), a)
            np.save(os.path.join(rdir, f"out_{k}.npy"), r.reshape(H, W, c))
            f.write(f"{w} {h} {c} {W} {H}\n")

    # BOX cases: center_crop_arr's halvings (odd sides too) and general ratios.
    cases = [(300, 200, 3, 150, 100), (301, 199, 3, 150, 99), (1001, 129, 1, 500, 64), (37, 23, 3, 16, 16),
             (64, 64, 1, 64, 17), (17, 9, 1, 60, 31), (7, 5, 3, 3, 2)]
    rdir = os.path.join(out, "box")
    os.makedirs(rdir, exist_ok=True)
    with open(os.path.join(rdir, "cases.txt"), "w") as f:
        for k, (w, h, c, W, H) in enumerate(cases):
            a = rng.integers(0, 256, size=(h, w, c)).astype(np.uint8)
            img = Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB")
            r = np.asarray(img.resize((W, H), Image.BOX), dtype=np.uint8)
            np.save(os.path.join(rdir, f"in_{k}.npy"), a)
            np.save(os.path.join(rdir, f"out_{k}.npy"), r.reshape(H, W, c))
            f.write(f"{w} {h} {c} {W} {H}\n")


if __name__ == "__main__":
    main()
