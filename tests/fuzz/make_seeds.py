#!/usr/bin/env python3
"""Writes the fuzz seeds that need PyTorch / NumPy (fuzz_make_seeds writes the others with the
library's own writers): OUT/<target>/<name> for fuzz_checkpoint (torch.save, zip and legacy
formats, f32/f16/bf16, shared storages, non-contiguous views), fuzz_unpickler (the checkpoints'
pickles and plain pickles of every protocol), fuzz_npy (NumPy's own files: versions 1-3, Fortran
order, more dtypes), fuzz_idx (plain and gzip), fuzz_idx_gzip (plain: the target compresses) and
fuzz_unet_load (a small U-Net's weights as safetensors with its config in the metadata, and as a
torch checkpoint). Small on purpose: every file is well under the fuzzers' -max_len.

Usage: /usr/bin/python3 tests/fuzz/make_seeds.py OUT
"""
import collections
import gzip
import io
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import adm_unet  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) == 2 else sys.exit("usage: make_seeds.py OUT")
torch.manual_seed(0)
np.random.seed(0)


def target(name):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    return d


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---- PyTorch checkpoints ----------------------------------------------------------------------
ckpt, pkl = target("fuzz_checkpoint"), target("fuzz_unpickler")
flat = torch.arange(12, dtype=torch.float16)
cases = {
    "f32": collections.OrderedDict(w=torch.randn(2, 3), b=torch.randn(3)),
    "f16": collections.OrderedDict(w=torch.randn(2, 2).half(), n=torch.tensor(5)),
    "bf16": {"w": torch.randn(3).bfloat16(), "i": torch.arange(3, dtype=torch.int32)},
    "shared": collections.OrderedDict(a=flat[:4].view(2, 2), b=flat[4:10], c=flat[10:]),
    "views": {"t": torch.randn(3, 4).t(), "s": torch.randn(4, 4)[::2, 1:3], "e": torch.zeros(0, 3)},
    "nested": {"state_dict": collections.OrderedDict(x=torch.randn(2)), "epoch": 3, "name": "seed"},
    "f64_i64": {"d": torch.randn(2, dtype=torch.float64), "l": torch.arange(2)},
}
for case, sd in cases.items():
    for legacy in (False, True):
        buf = io.BytesIO()
        torch.save(sd, buf, _use_new_zipfile_serialization=not legacy)
        data = buf.getvalue()
        write(os.path.join(ckpt, f"{case}{'_legacy' if legacy else ''}.pt"), data)
        if legacy:
            write(os.path.join(pkl, f"{case}_legacy.pkl"), data)  # several pickles in a row
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                write(os.path.join(pkl, f"{case}_data.pkl"), z.read(name))

# ---- Plain pickles -----------------------------------------------------------------------------
value = {"a": [1, 2.5, None, True, False, "s", b"b", (1, 2), 2**70, -2**40], "b": {"x": (("y",),)}}
for proto in range(0, 6):
    write(os.path.join(pkl, f"plain_p{proto}.pkl"), pickle.dumps(value, protocol=proto))
write(os.path.join(pkl, "odict.pkl"), pickle.dumps(collections.OrderedDict(k=1), protocol=2))
shared = [1, 2]
write(os.path.join(pkl, "memo.pkl"), pickle.dumps([shared, shared, {"s": shared}], protocol=2))

# ---- NumPy files ----------------------------------------------------------------------------------
npy = target("fuzz_npy")
arrays = {"f4": np.arange(6, dtype="<f4").reshape(2, 3), "f8": np.linspace(0, 1, 5),
          "u1": np.arange(8, dtype=np.uint8).reshape(2, 2, 2), "i4": np.arange(4, dtype="<i4"),
          "f2": np.arange(3, dtype="<f2"), "bool": np.array([True, False]),
          "fortran": np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)),
          "big_endian": np.arange(3, dtype=">f4"), "zero_d": np.array(3.5, dtype="<f4")}
for name, a in arrays.items():
    np.save(os.path.join(npy, f"np_{name}.npy"), a)
for version in ((1, 0), (2, 0), (3, 0)):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arrays["f4"], version=version)
    write(os.path.join(npy, f"np_v{version[0]}.npy"), buf.getvalue())

# ---- IDX (MNIST's format) -------------------------------------------------------------------------
idx, idx_gz = target("fuzz_idx"), target("fuzz_idx_gzip")


def idx_bytes(a, code):
    return struct.pack(">BBBB", 0, 0, code, a.ndim) + b"".join(struct.pack(">I", d) for d in a.shape) + \
        a.astype(a.dtype.newbyteorder(">")).tobytes()


idx_cases = {"images": (np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3), 0x08),
             "labels": (np.arange(5, dtype=np.uint8), 0x08),
             "i8": (np.arange(-3, 3, dtype=np.int8), 0x09),
             "i16": (np.arange(6, dtype=np.int16).reshape(2, 3), 0x0B),
             "i32": (np.arange(4, dtype=np.int32), 0x0C),
             "f32": (np.linspace(0, 1, 4, dtype=np.float32), 0x0D),
             "f64": (np.linspace(0, 1, 3), 0x0E)}
for name, (a, code) in idx_cases.items():
    b = idx_bytes(a, code)
    write(os.path.join(idx, f"{name}.idx"), b)
    write(os.path.join(idx, f"{name}.idx.gz"), gzip.compress(b, mtime=0))
    write(os.path.join(idx_gz, f"{name}.idx"), b)

# ---- A small U-Net's weights -------------------------------------------------------------------
unet = target("fuzz_unet_load")
flags = {"image_size": 8, "num_channels": 32, "channel_mult": "1", "num_res_blocks": 1,
         "attention_resolutions": "8", "num_heads": 1, "num_head_channels": -1, "learn_sigma": False,
         "class_cond": False, "use_scale_shift_norm": True, "resblock_updown": False}
import json  # noqa: E402
model = adm_unet.build_unet(adm_unet.UNetConfig(flags))
adm_unet.randomize_(model, 1)
sd = model.state_dict()
adm_unet.save_safetensors(os.path.join(unet, "small.safetensors"), sd, {"config": json.dumps(flags)})
adm_unet.save_safetensors(os.path.join(unet, "small_inferred.safetensors"), sd)
adm_unet.save_safetensors(os.path.join(unet, "small_f16.safetensors"),
                          collections.OrderedDict((k, v.half()) for k, v in sd.items()),
                          {"config": json.dumps(flags)})
torch.save(sd, os.path.join(unet, "small.pt"))
print(f"make_seeds.py: wrote {sum(len(fs) for _, _, fs in os.walk(OUT))} files under {OUT}")
