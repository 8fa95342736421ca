#!/usr/bin/env python3
"""Writes the hand-made hostile inputs of tests/fuzz/regressions/<target>/ (issue 20's findings,
each fixed in the library and refused now with a diffprobe::Error). The files are committed; this
script documents how they were made and rewrites them: /usr/bin/python3 tests/fuzz/make_regressions.py.
Inputs found by the fuzzing campaigns are committed next to them as libFuzzer wrote them
(crash-<sha1> / timeout-<sha1> / oom-<sha1>, renamed to say what they are)."""
import collections
import io
import json
import os
import pickle
import struct
import zipfile
import zlib

import torch
from PIL import Image

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "regressions")


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- JPEG: decompression bombs and data segments that end early --------------------------------
def jpeg(w, h, mode="RGB", quality=75):
    buf = io.BytesIO()
    Image.new(mode, (w, h), 128 if mode == "L" else (200, 10, 60)).save(buf, "JPEG", quality=quality)
    return bytearray(buf.getvalue())


def with_size(j, w, h):
    i = j.index(b"\xff\xc0")  # SOF0: FF C0 len(2) precision(1) height(2) width(2)
    j[i + 5:i + 7] = struct.pack(">H", h)
    j[i + 7:i + 9] = struct.pack(">H", w)
    return j


def cut_scan(j, keep):
    sos = j.index(b"\xff\xda")
    start = sos + 2 + struct.unpack(">H", j[sos + 2:sos + 4])[0]
    return bytes(j[:start + keep]) + b"\xff\xd9"


small = jpeg(16, 16)
write("fuzz_jpeg", "bomb_64520x16621_scan_ends_early.jpg", cut_scan(with_size(bytearray(small), 64520, 16621), 8))
write("fuzz_jpeg", "bomb_3080x64254_scan_ends_early.jpg", cut_scan(with_size(bytearray(small), 3080, 64254), 40))
write("fuzz_jpeg", "grey_header_65500x32000.jpg", cut_scan(with_size(jpeg(16, 16, "L"), 65500, 32000), 0))
big = jpeg(64, 64, quality=90)
sos = big.index(b"\xff\xda")
write("fuzz_jpeg", "64x64_scan_cut_in_half.jpg", cut_scan(big, (len(big) - sos) // 2))


# ---- PNG: bombs -------------------------------------------------------------------------------
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(w, h, depth, colour, idat=b"\x00\x01\x02\x03"):
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(idat)) + chunk(b"IEND", b"")


write("fuzz_png", "rgba16_23170x23170.png", png(23170, 23170, 16, 6))
write("fuzz_png", "grey8_65535x65535.png", png(65535, 65535, 8, 0))
write("fuzz_png", "rgb8_1x2147483647.png", png(1, 2147483647, 8, 2))


# ---- Tensors whose empty shape hides huge other dimensions: (0, 2^32, 2^32) --------------------
HUGE = [0, 2**32, 2**32]


def safetensors(header, data=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


write("fuzz_safetensors", "empty_0x2p32x2p32.safetensors",
      safetensors({"t": {"dtype": "F32", "shape": HUGE, "data_offsets": [0, 0]}}))
write("fuzz_safetensors", "2p32x2p32.safetensors",
      safetensors({"t": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}))
hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }"
hdr += " " * (64 - (10 + len(hdr) + 1) % 64) + "\n"
write("fuzz_npy", "empty_0x2p32x2p32.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
meta = {"format": "diffprobe.features", "format_version": "1", "weights_sha256": "a" * 64,
        "config": "{}", "timesteps": "90", "blocks": "19", "pooling": "none", "noise_seed": "0",
        "noise_draws": "1", "preprocessing": "", "preprocess": "", "copies": "1", "library": "diffprobe 0.1.0"}
write("fuzz_feature_file", "empty_0x2p32x2p32.safetensors",
      safetensors({"__metadata__": meta, "t90.b19": {"dtype": "F32", "shape": HUGE, "data_offsets": [0, 0]}}))


# ---- Heads: a spec asking for a huge model, a spec whose input shape overflows ------------------
def head(spec, tensors=None):
    meta = {"diffprobe.format": "head", "diffprobe.head_version": "1", "diffprobe.head": json.dumps(spec)}
    return safetensors(dict({"__metadata__": meta}, **(tensors or {})))


base = {"kind": "linear", "inputs": [[1024, 32, 32]], "num_timesteps": 1, "num_classes": 100000, "hidden": [],
        "cnn": {"channels": [256], "max_pool": 16, "input_norm": True, "norm_eps": 1e-5},
        "attention": {"dim": 1024, "depth": 2, "heads": 8, "mlp_ratio": 4, "max_pool": 16, "norm_eps": 1e-5}}
write("fuzz_head", "linear_asks_400GB.safetensors",
      head(base, {"linear.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}) + b"\0" * 4)
write("fuzz_head", "input_2p32x2p32.safetensors", head(dict(base, inputs=[[2**32, 2**32]], num_classes=10)))
write("fuzz_head", "attention_huge_dim.safetensors",
      head(dict(base, kind="attention", inputs=[[4, 8, 8]], num_classes=10,
                attention=dict(base["attention"], dim=1 << 30, depth=1000))))

# Integers that are not JSON integers in range (get<int>() of 1e300 was undefined behaviour).
write("fuzz_head", "num_classes_1e300.safetensors", head(dict(base, inputs=[[6]], num_classes=1e300)))
write("fuzz_head", "input_shape_6.5e30.safetensors", head(dict(base, inputs=[[6.5e30]], num_classes=3)))


# ---- Torch checkpoints: views of storages without data, huge empty shapes ------------------------
class Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def dumps(obj):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def legacy(root, listed):
    out = pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
    out += pickle.dumps({"protocol_version": 1001, "little_endian": True,
                         "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    out += dumps(root) + pickle.dumps([s.key for s in listed], protocol=2)
    for s in listed:
        out += struct.pack("<q", s.numel) + b"\0" * (4 * s.numel)
    return out


s0 = Storage("0", 10)
write("fuzz_checkpoint", "legacy_empty_view_of_storage_without_data.pt",
      legacy(collections.OrderedDict(w=FakeTensor(s0, 5, [0], [1])), []))
s1 = Storage("1", 0)
write("fuzz_checkpoint", "legacy_empty_0x2p32x2p32.pt",
      legacy(collections.OrderedDict(w=FakeTensor(s1, 0, HUGE, [1, 1, 1])), [s1]))


def torch_zip(root, storages):
    buf = io.BytesIO()
    def entry(z, name, data):  # a fixed date: the same bytes on every run
        z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)

    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        entry(z, "archive/data.pkl", dumps(root))
        for s in storages:
            entry(z, f"archive/data/{s.key}", b"\0" * (4 * s.numel))
        entry(z, "archive/version", b"3\n")
    return buf.getvalue()


write("fuzz_checkpoint", "zip_empty_0x2p32x2p32.pt",
      torch_zip(collections.OrderedDict(w=FakeTensor(Storage("0", 0), 0, HUGE, [1, 1, 1])), [Storage("0", 0)]))
write("fuzz_unpickler", "legacy_empty_view_of_storage_without_data.pkl",
      dumps(collections.OrderedDict(w=FakeTensor(s0, 5, [0], [1]))))


# ---- IDX: headers asking for far more than the file holds ----------------------------------------
import gzip  # noqa: E402
huge_idx = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">III", 2**31 - 1, 65535, 65535) + b"\0" * 16
write("fuzz_idx", "u8_2p31x65535x65535.idx", huge_idx)
write("fuzz_idx", "u8_2p31x65535x65535.idx.gz", gzip.compress(huge_idx, mtime=0))
write("fuzz_idx", "f64_255_dims.idx", struct.pack(">BBBB", 0, 0, 0x0E, 255) + struct.pack(">I", 2) * 255)
write("fuzz_idx_gzip", "u8_2p31x65535x65535.idx", huge_idx)


# ---- U-Net configs: 40 channel_mult levels, float -> int overflows, 4 * num_channels ---------------
cfgs = {"channel_mult_40_levels": {"image_size": 64, "num_channels": 32, "channel_mult": ",".join(["1"] * 40)},
        "attention_resolutions_1e20": {"image_size": 64, "num_channels": 32, "channel_mult": "1,2",
                                       "attention_resolutions": "1e20"},
        "channel_mult_1e300": {"image_size": 64, "num_channels": 32, "channel_mult": "1e300"},
        "num_channels_2p29": {"image_size": 64, "num_channels": 2**29, "channel_mult": "1,2"},
        "image_size_2p20": {"image_size": 2**20, "num_channels": 32, "channel_mult": "1,2"},
        "num_channels_2p32_plus_32": {"image_size": 64, "num_channels": 2**32 + 32, "channel_mult": "1,2"}}
for name, c in cfgs.items():
    write("fuzz_unet_config", name + ".json", json.dumps(c).encode())
    # The same config reached through a weights file's metadata (UNet::load).
    write("fuzz_unet_load", name + ".safetensors",
          safetensors({"__metadata__": {"config": json.dumps(c)},
                       "out.2.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}}, b"\0" * 12))
print("make_regressions.py: done")
