#!/usr/bin/env python3
"""Writes the files the io tests read: checkpoints saved by the real torch.save (zip and legacy
formats, f32/f16/bf16, the shared-flat-storage layout of the official fp16 training loop,
non-contiguous views), a safetensors file written by hand from the format description, NumPy
files written by NumPy (versions 1.0-3.0, Fortran order), IDX files (plain and gzip) and a few
hostile files (pickles that call os.system).

Usage: make_checkpoints.py OUTDIR

For every checkpoint CASE it writes CASE.<ext>, CASE.manifest (one line per tensor, in state-dict
order: index, name, loaded dtype, comma-separated shape) and CASE/<index>.npy holding the values
the C++ loader must produce, in that dtype (bf16 and f64 values are given as f32, which is exact
for bf16 and is the loader's documented rounding for f64).
For the NumPy and IDX inputs, NAME.expect holds the expected values as raw little-endian float64
in C order, so those tests do not depend on the loader they check.
"""
import collections
import gzip
import json
import os
import pickle
import struct
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # the C++ test reports this output as its failure
    print(f"make_checkpoints.py: {e}. The io tests need /usr/bin/python3 with numpy and torch "
          "(Debian: python3-numpy python3-torch).", file=sys.stderr)
    sys.exit(2)

OUT = sys.argv[1] if len(sys.argv) == 2 else sys.exit("usage: make_checkpoints.py OUTDIR")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(1234)
np.random.seed(1234)

LOADED = {torch.float32: ("f32", np.float32), torch.float16: ("f16", np.float16),
          torch.bfloat16: ("bf16", np.float32), torch.float64: ("f32", np.float32),
          torch.int64: ("i64", np.int64), torch.int32: ("i32", np.int32)}


def expected(case, sd):
    os.makedirs(os.path.join(OUT, case), exist_ok=True)
    with open(os.path.join(OUT, case + ".manifest"), "w") as m:
        for i, (name, t) in enumerate(sd.items()):
            dt, npdt = LOADED[t.dtype]
            # Through float32 for bf16 (exact) and f64 (round to nearest, as the loader does).
            src = t.detach().float() if t.dtype in (torch.bfloat16, torch.float64) else t.detach()
            if t.dtype == torch.float64:
                src = torch.from_numpy(t.detach().numpy().astype(np.float32))
            np.save(os.path.join(OUT, case, f"{i}.npy"), np.array(src.numpy(), dtype=npdt, order="C"))  # keeps 0-d
            m.write(f"{i}\t{name}\t{dt}\t{','.join(str(s) for s in t.shape)}\n")


def save(case, sd, legacy=False):
    torch.save(sd, os.path.join(OUT, case + ".pt"), _use_new_zipfile_serialization=not legacy)
    expected(case, sd)


def special(dtype):
    """Values whose bits must survive: signed zeros, infinities, subnormals, extremes."""
    if dtype == torch.float16:
        vals = [0.0, -0.0, float("inf"), float("-inf"), 6.0e-8, -6.0e-8, 65504.0, 1.0 / 3.0]
    elif dtype == torch.bfloat16:
        vals = [0.0, -0.0, float("inf"), float("-inf"), 1e-40, 3.0e38, -1.0 / 3.0, 7.0]
    else:
        vals = [0.0, -0.0, float("inf"), float("-inf"), 1e-45, -1.17e-38, 3.4e38, 1.0 / 3.0]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


def base_state_dict():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Linear(4, 2))
    sd = net.state_dict()  # an OrderedDict with _metadata (pickled through BUILD)
    sd["scalar"] = torch.tensor(2.5)
    sd["special"] = special(torch.float32)
    sd["index.i64"] = torch.tensor([-(2 ** 40), -1, 0, 1, 2 ** 52 + 1], dtype=torch.int64)
    sd["index.i32"] = torch.tensor([[-(2 ** 31), 7], [2 ** 31 - 1, 0]], dtype=torch.int32)
    sd["double"] = torch.randn(3, 2, dtype=torch.float64) * 1e3
    sd["empty"] = torch.zeros(0, 5)
    sd["big"] = torch.randn(3, 5, 7, 11)
    return sd


# ---- plain checkpoints ------------------------------------------------------------------------
sd = base_state_dict()
save("zip_f32", sd)
save("legacy_f32", sd, legacy=True)
# nn.Parameter values are pickled through torch._utils._rebuild_parameter.
params = collections.OrderedDict(w=torch.nn.Parameter(torch.randn(2, 3)), b=torch.nn.Parameter(torch.randn(3)))
save("zip_param", params)
save("legacy_param", params, legacy=True)
# A plain dict at the top and a training checkpoint wrapping the state dict.
save("zip_plain_dict", {"a": torch.randn(4), "b": torch.arange(6, dtype=torch.int64).view(2, 3)})
torch.save({"epoch": 3, "state_dict": collections.OrderedDict(x=torch.randn(2, 2))},
           os.path.join(OUT, "zip_wrapped.pt"))
expected("zip_wrapped", collections.OrderedDict(x=torch.load(os.path.join(OUT, "zip_wrapped.pt"))["state_dict"]["x"]))

for dtype, tag in ((torch.float16, "f16"), (torch.bfloat16, "bf16")):
    low = collections.OrderedDict((k, v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items())
    low["special"] = special(dtype)
    save(f"zip_{tag}", low)
    save(f"legacy_{tag}", low, legacy=True)


# ---- shared flat storages (official fp16 training loop layout) --------------------------------
def flat_views(dtype):
    """Every parameter a view into one of two flat storages (1-D parameters and the rest), each
    at a non-zero storage offset."""
    shapes = collections.OrderedDict([
        ("input_blocks.0.0.weight", (8, 3, 3, 3)), ("input_blocks.0.0.bias", (8,)),
        ("out.0.weight", (8,)), ("out.0.bias", (8,)), ("out.2.weight", (3, 8, 3, 3)),
        ("time_embed.0.weight", (16, 8)), ("time_embed.0.bias", (16,)),
    ])
    one_d = sum(int(np.prod(s)) for s in shapes.values() if len(s) == 1)
    multi = sum(int(np.prod(s)) for s in shapes.values() if len(s) != 1)
    flat1 = torch.randn(one_d + 5).to(dtype)
    flat2 = torch.randn(multi + 3).to(dtype)
    off1, off2, out = 3, 1, collections.OrderedDict()
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        if len(shape) == 1:
            out[name] = flat1[off1:off1 + n].view(shape)
            off1 += n
        else:
            out[name] = flat2[off2:off2 + n].view(shape)
            off2 += n
    for t in out.values():
        assert t.storage_offset() > 0
    return out


save("shared_legacy_f16", flat_views(torch.float16), legacy=True)
save("shared_zip_f16", flat_views(torch.float16))
save("shared_zip_f32", flat_views(torch.float32))
save("shared_legacy_f32", flat_views(torch.float32), legacy=True)

# ---- non-contiguous tensors -------------------------------------------------------------------
base = torch.randn(6, 10)
nc = collections.OrderedDict()
nc["transposed"] = torch.randn(5, 7).t()
nc["stepped"] = base[1:, ::3]
nc["permuted"] = torch.randn(2, 3, 4).permute(2, 0, 1)
nc["expanded"] = torch.randn(3, 1).expand(3, 4)  # stride 0
nc["row"] = base[2]
nc["half_t"] = torch.randn(4, 6).half().t()
nc["double_t"] = torch.randn(3, 4, dtype=torch.float64).t()
for t in list(nc.values())[:4]:
    assert not t.is_contiguous()
save("noncontig_zip", nc)
save("noncontig_legacy", nc, legacy=True)


# ---- safetensors written from the format description (no safetensors package) ----------------
def write_safetensors(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (code, arr) in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


st_f32 = np.random.randn(4, 3).astype(np.float32)
st_f16 = np.random.randn(5).astype(np.float16)
st_bf16 = torch.randn(2, 3).bfloat16()
st_f64 = np.random.randn(3).astype(np.float64)
st_i64 = np.array([-5, 0, 2 ** 40], dtype=np.int64)
st_u8 = np.array([[0, 255], [7, 128]], dtype=np.uint8)
st_i8 = np.array([-128, 127, 0], dtype=np.int8)
write_safetensors(os.path.join(OUT, "py_written.safetensors"), collections.OrderedDict([
    ("weight", ("F32", st_f32)), ("half", ("F16", st_f16)),
    ("brain", ("BF16", st_bf16.view(torch.int16).numpy())), ("double", ("F64", st_f64)),
    ("ids", ("I64", st_i64)), ("bytes", ("U8", st_u8)), ("signed", ("I8", st_i8)),
    ("nothing", ("F32", np.zeros((0, 3), np.float32))),
]), {"format": "pt", "note": "written by make_checkpoints.py"})
expected("py_written", collections.OrderedDict([
    ("weight", torch.from_numpy(st_f32)), ("half", torch.from_numpy(st_f16)), ("brain", st_bf16),
    ("double", torch.from_numpy(st_f64)), ("ids", torch.from_numpy(st_i64)),
    ("bytes", torch.from_numpy(st_u8.astype(np.int32))), ("signed", torch.from_numpy(st_i8.astype(np.int32))),
    ("nothing", torch.zeros(0, 3)),
]))


# ---- NumPy files ------------------------------------------------------------------------------
def npy_case(name, arr, version=None):
    path = os.path.join(OUT, name + ".npy")
    if version is None:
        np.save(path, arr)
    else:
        with open(path, "wb") as f:
            np.lib.format.write_array(f, arr, version=version)
    np.ascontiguousarray(arr, dtype="<f8").tofile(os.path.join(OUT, name + ".expect"))


npy_case("npy_f32", np.random.randn(3, 4).astype(np.float32))
npy_case("npy_f16", np.random.randn(2, 2, 3).astype(np.float16))
npy_case("npy_f64", np.random.randn(7).astype(np.float64).astype(np.float32).astype(np.float64))
npy_case("npy_i32", np.arange(-6, 6, dtype=np.int32).reshape(3, 4))
npy_case("npy_i64", np.array([-(2 ** 50), 3, 2 ** 50], dtype=np.int64))
npy_case("npy_u8", np.arange(0, 256, 17, dtype=np.uint8).reshape(4, 4))
npy_case("npy_scalar", np.array(1.5, dtype=np.float32))
npy_case("npy_fortran", np.asfortranarray(np.random.randn(3, 5, 2).astype(np.float32)))
npy_case("npy_v2", np.random.randn(2, 3).astype(np.float32), version=(2, 0))
npy_case("npy_v3", np.random.randn(4).astype(np.float32), version=(3, 0))
np.save(os.path.join(OUT, "npy_bigendian.npy"), np.arange(4, dtype=">f4"))


# ---- IDX files (MNIST layout) -----------------------------------------------------------------
def idx_bytes(code, arr, be_dtype):
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(be_dtype).tobytes()


images = np.random.randint(0, 256, size=(5, 4, 3)).astype(np.uint8)
labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
floats = np.random.randn(3, 2).astype(np.float32)
for name, code, arr, be in (("idx_images", 0x08, images, "u1"), ("idx_labels", 0x08, labels, "u1"),
                            ("idx_float", 0x0D, floats, ">f4")):
    data = idx_bytes(code, arr, be)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    with gzip.open(os.path.join(OUT, name + ".gz"), "wb") as f:
        f.write(data)
    arr.astype("<f8").tofile(os.path.join(OUT, name + ".expect"))
with open(os.path.join(OUT, "idx_images.gz"), "rb") as f:
    gz = f.read()
with open(os.path.join(OUT, "idx_truncated.gz"), "wb") as f:
    f.write(gz[: len(gz) - 12])  # cut into the deflate stream and trailer
with open(os.path.join(OUT, "idx_corrupt.gz"), "wb") as f:
    mid = len(gz) // 2  # inside the deflate stream (the header holds a file name)
    f.write(gz[:mid] + bytes(b ^ 0x5A for b in gz[mid:mid + 8]) + gz[mid + 8:])


# ---- hostile pickles --------------------------------------------------------------------------
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + os.path.join(OUT, "PWNED"),))


evil = pickle.dumps(collections.OrderedDict(x=Evil()), protocol=2)
# A zip checkpoint whose data.pkl calls os.system (stored entries, like torch writes them).
import zipfile  # noqa: E402

with zipfile.ZipFile(os.path.join(OUT, "evil_zip.pt"), "w", zipfile.ZIP_STORED) as z:
    z.writestr("evil_zip/data.pkl", evil)
    z.writestr("evil_zip/version", "3\n")
# The same in the legacy format: magic, protocol, sys info, object pickle, key list.
with open(os.path.join(OUT, "evil_legacy.pt"), "wb") as f:
    f.write(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2) +
            pickle.dumps(dict(protocol_version=1001, little_endian=True,
                              type_sizes=dict(short=2, int=4, long=4)), protocol=2) +
            evil + pickle.dumps([], protocol=2))
# A pickle that smuggles torch.storage._load_from_bytes (used by torch for non-tensor storages,
# but it unpickles arbitrary bytes, so it is refused too).
with zipfile.ZipFile(os.path.join(OUT, "evil_load_from_bytes.pt"), "w", zipfile.ZIP_STORED) as z:
    z.writestr("a/data.pkl", b"\x80\x02ctorch.storage\n_load_from_bytes\nq\x00C\x01xq\x01\x85q\x02Rq\x03.")

print("ok", OUT)
