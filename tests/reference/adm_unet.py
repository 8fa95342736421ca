#!/usr/bin/env python3
"""Self-contained PyTorch reference of the ADM U-Net (guided-diffusion / improved-diffusion).

This is the ground truth the C++ parity tests compare against; it follows
docs spec ADM.md line by line and does not import either official project.
State-dict keys, their order and shapes are exactly the official ones
(tests/reference/check_keys.py verifies this against the published checkpoints).

API
  UNetConfig(flags=None, **kw)   -> dict of official flags with defaults filled in
  build_unet(cfg, device=None)   -> UNetModel  (forward, forward_blocks)
  num_blocks(model)              -> 2*I + 1 (paper block numbers are 1..num_blocks, 0 = final output)
  randomize_(model, seed)        -> re-initialise every parameter (nothing left zero)
  noise_schedule(kind, T)        -> (betas, alphas_cumprod), float64 numpy
  q_sample(x0, t, eps, alphas_cumprod) -> x_t
  save_safetensors / load_safetensors

CLI (used by the C++ parity tests):
  python3 adm_unet.py dump --config CFG.json --seed S --batch N --t 5,17,900 \
      [--labels 1,2,3] [--blocks all|1,5,0] --out DIR
"""
import argparse
import json
import math
import os
import struct
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------

# guided-diffusion's model_and_diffusion_defaults() (model part) plus in_channels.
_DEFAULTS = OrderedDict(
    image_size=64,
    in_channels=3,
    num_channels=128,
    num_res_blocks=2,
    attention_resolutions="16,8",
    channel_mult="",
    num_heads=4,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_new_attention_order=False,
    learn_sigma=False,
    class_cond=False,
    num_classes=None,  # None -> 1000 when class_cond (the official NUM_CLASSES)
    dropout=0.0,
    use_fp16=False,  # accepted, ignored: this reference always runs fp32/fp64
)

# Official flags that do not change the network; accepted and kept, never used.
_NON_MODEL_FLAGS = {
    "use_checkpoint", "diffusion_steps", "noise_schedule", "timestep_respacing",
    "use_kl", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas",
    "sigma_small",
}

# channel_mult "" resolved by image size (guided-diffusion; 32 from improved-diffusion).
_DEFAULT_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


class UNetConfig(dict):
    """Official flag dict with defaults filled in, plus a few derived values."""

    def __init__(self, flags=None, **kw):
        super().__init__(_DEFAULTS)
        merged = dict(flags or {})
        merged.update(kw)
        for k, v in merged.items():
            if k not in _DEFAULTS and k not in _NON_MODEL_FLAGS:
                raise ValueError(f"unknown U-Net flag: {k!r}")
            self[k] = v

    @property
    def channel_mult_tuple(self):
        cm = self["channel_mult"]
        if cm in ("", None):
            if self["image_size"] not in _DEFAULT_MULT:
                raise ValueError(f"no default channel_mult for image_size {self['image_size']}")
            return _DEFAULT_MULT[self["image_size"]]
        if isinstance(cm, str):
            return tuple(float(m) if "." in m else int(m) for m in cm.split(","))
        return tuple(cm)

    @property
    def attention_ds(self):
        ar = self["attention_resolutions"]
        res = [int(r) for r in ar.split(",") if r.strip()] if isinstance(ar, str) else list(ar)
        return {self["image_size"] // r for r in res}

    @property
    def out_channels(self):
        return self["in_channels"] * (2 if self["learn_sigma"] else 1)

    @property
    def n_classes(self):
        if not self["class_cond"]:
            return None
        return self["num_classes"] if self["num_classes"] is not None else 1000


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------

def _compute_dtype(dtype):
    # Official code does norms and softmax in fp32; we keep fp64 when the model is fp64
    # so the fp64 reference stays fp64 end to end.
    return torch.promote_types(dtype, torch.float32)


class GroupNorm32(nn.GroupNorm):
    def __init__(self, channels, device=None):
        super().__init__(32, channels, eps=1e-5, affine=True, device=device)

    def forward(self, x):
        dt = _compute_dtype(x.dtype)
        return F.group_norm(x.to(dt), self.num_groups, self.weight.to(dt),
                            self.bias.to(dt), self.eps).to(x.dtype)


def timestep_embedding(t, dim, dtype=torch.float32, max_period=10000):
    """[cos(t*f), sin(t*f)], f_i = exp(-ln(10000) i/half). fp32 like the official code,
    fp64 when dtype is fp64 (the accurate reference)."""
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=ct, device=t.device) / half)
    args = t.to(ct)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    """A block whose forward takes the time embedding too."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv (key `conv`)."""

    def __init__(self, ch, device=None):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, device=device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """3x3 conv, stride 2 (key `op`)."""

    def __init__(self, ch, device=None):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1, device=device)

    def forward(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    def __init__(self, ch, emb_ch, dropout, out_ch, use_scale_shift_norm,
                 up=False, down=False, device=None):
        super().__init__()
        self.out_ch = out_ch
        self.use_scale_shift_norm = use_scale_shift_norm
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(
            GroupNorm32(ch, device), nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1, device=device))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if use_scale_shift_norm else out_ch, device=device))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_ch, device), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, device=device))
        self.skip_connection = (nn.Identity() if out_ch == ch
                                else nn.Conv2d(ch, out_ch, 1, device=device))

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2, 2)
        return x

    def forward(self, x, emb):
        # Resampling sits between GN+SiLU and the conv; the skip path is resampled the same way.
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self._resample(h))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(e, 2, dim=1)  # scale is the first half
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + e))
        return self.skip_connection(x) + h


def _attention_legacy(qkv, heads):
    # [N, 3C, T] -> [N*heads, 3d, T]: channel o is head o//(3d), role (o%3d)//d.
    n, width, length = qkv.shape
    d = width // (3 * heads)
    q, k, v = qkv.reshape(n * heads, 3 * d, length).split(d, dim=1)
    return _attend(q, k, v, d).reshape(n, -1, length)


def _attention_new(qkv, heads):
    # Split q, k, v first (C rows each), then each into heads of d rows.
    n, width, length = qkv.shape
    d = width // (3 * heads)
    q, k, v = qkv.chunk(3, dim=1)
    shp = (n * heads, d, length)
    return _attend(q.reshape(shp), k.reshape(shp), v.reshape(shp), d).reshape(n, -1, length)


def _attend(q, k, v, d):
    scale = 1 / math.sqrt(math.sqrt(d))  # on both q and k -> logits q.k/sqrt(d)
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    w = torch.softmax(w.to(_compute_dtype(w.dtype)), dim=-1).to(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v)


class AttentionBlock(nn.Module):
    def __init__(self, ch, num_heads=1, num_head_channels=-1, use_new_attention_order=False,
                 device=None):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            assert ch % num_head_channels == 0, (ch, num_head_channels)
            self.num_heads = ch // num_head_channels
        self.new_order = use_new_attention_order
        self.norm = GroupNorm32(ch, device)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1, device=device)
        self.proj_out = nn.Conv1d(ch, ch, 1, device=device)

    def forward(self, x):
        n, c = x.shape[:2]
        xf = x.reshape(n, c, -1)
        qkv = self.qkv(self.norm(xf))
        attn = _attention_new if self.new_order else _attention_legacy
        h = self.proj_out(attn(qkv, self.num_heads))
        return (xf + h).reshape(x.shape)


# ---------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------

class UNetModel(nn.Module):
    def __init__(self, cfg, device=None):
        super().__init__()
        cfg = UNetConfig(cfg)
        self.config = cfg
        mc = cfg["num_channels"]
        nrb = cfg["num_res_blocks"]
        mult = cfg.channel_mult_tuple
        attn_ds = cfg.attention_ds
        heads = cfg["num_heads"]
        head_ch = cfg["num_head_channels"]
        heads_up = cfg["num_heads_upsample"] if cfg["num_heads_upsample"] != -1 else heads
        ssn = cfg["use_scale_shift_norm"]
        updown = cfg["resblock_updown"]
        new_order = cfg["use_new_attention_order"]
        dropout = cfg["dropout"]
        emb_ch = 4 * mc
        self.model_channels = mc
        dv = dict(device=device)

        # Registration order = official state-dict order.
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch, **dv), nn.SiLU(),
                                        nn.Linear(emb_ch, emb_ch, **dv))
        self.num_classes = cfg.n_classes
        if self.num_classes is not None:
            self.label_emb = nn.Embedding(self.num_classes, emb_ch, **dv)

        ch = input_ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(cfg["in_channels"], ch, 3, padding=1, **dv))])
        skip_chans = [ch]
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers = [ResBlock(ch, emb_ch, dropout, int(m * mc), ssn, **dv)]
                ch = int(m * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads, head_ch, new_order, **dv))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    ResBlock(ch, emb_ch, dropout, ch, ssn, down=True, **dv) if updown
                    else Downsample(ch, **dv)))
                skip_chans.append(ch)
                ds *= 2

        # The middle block always has attention.
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_ch, dropout, ch, ssn, **dv),
            AttentionBlock(ch, heads, head_ch, new_order, **dv),
            ResBlock(ch, emb_ch, dropout, ch, ssn, **dv))

        self.output_blocks = nn.ModuleList()
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(nrb + 1):
                ich = skip_chans.pop()
                layers = [ResBlock(ch + ich, emb_ch, dropout, int(m * mc), ssn, **dv)]
                ch = int(m * mc)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads_up, head_ch, new_order, **dv))
                if level and i == nrb:
                    layers.append(ResBlock(ch, emb_ch, dropout, ch, ssn, up=True, **dv) if updown
                                  else Upsample(ch, **dv))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch, device), nn.SiLU(),
                                 nn.Conv2d(input_ch, cfg.out_channels, 3, padding=1, **dv))

    @property
    def num_input_blocks(self):
        return len(self.input_blocks)

    def embed(self, timesteps, y=None):
        dtype = self.time_embed[0].weight.dtype
        t = torch.as_tensor(timesteps, device=self.time_embed[0].weight.device)
        if t.dim() == 0:
            t = t[None]
        emb = self.time_embed(timestep_embedding(t, self.model_channels, dtype).to(dtype))
        if self.num_classes is not None:
            if y is None:
                raise ValueError("class-conditional model needs labels y")
            emb = emb + self.label_emb(torch.as_tensor(y, device=emb.device))
        return emb

    def forward_blocks(self, x, timesteps, y=None, blocks=None):
        """Run the U-Net and return {block: tensor} in paper numbering (ADM.md §3):
        1..I input blocks, I+1 middle, I+2..2I+1 output blocks, 0 = final `out`.
        blocks=None or "all" returns every block. Stops after the deepest requested block."""
        n_in = self.num_input_blocks
        total = 2 * n_in + 1
        if blocks is None or blocks == "all":
            wanted = set(range(total + 1))
        else:
            wanted = {int(b) for b in blocks}
        for b in wanted:
            if not 0 <= b <= total:
                raise ValueError(f"block {b} out of range 0..{total}")
        last = total + 1 if 0 in wanted else max(wanted)  # total+1 = also run `out`

        emb = self.embed(timesteps, y)
        h = x.to(emb.dtype)
        res, skips, b = {}, [], 0
        for blk in self.input_blocks:
            b += 1
            h = blk(h, emb)
            skips.append(h)
            if b in wanted:
                res[b] = h
            if b >= last:
                return res
        b += 1
        h = self.middle_block(h, emb)
        if b in wanted:
            res[b] = h
        if b >= last:
            return res
        for blk in self.output_blocks:
            b += 1
            h = blk(torch.cat([h, skips.pop()], dim=1), emb)  # h first
            if b in wanted:
                res[b] = h
            if b >= last:
                return res
        res[0] = self.out(h)
        return res

    def forward(self, x, timesteps, y=None):
        return self.forward_blocks(x, timesteps, y, blocks=[0])[0]


def build_unet(cfg, device=None):
    """Build the U-Net from official flags (dict or UNetConfig). device='meta' allocates nothing."""
    return UNetModel(cfg, device=device)


def num_blocks(model):
    """Number of paper blocks (2I+1); valid block numbers are 1..num_blocks, 0 = final output."""
    return 2 * model.num_input_blocks + 1


@torch.no_grad()
def randomize_(model, seed):
    """Re-initialise every parameter with seeded random values, nothing zero.
    GN weights 1+0.3 randn, biases 0.1 randn, weight matrices randn/sqrt(fan_in) (keeps
    activations O(1) through the net), embeddings randn. Drawn on the CPU in state-dict
    order, so the result depends only on the seed and the config."""
    g = torch.Generator().manual_seed(int(seed))
    gn = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    for name, p in model.named_parameters():
        r = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if name in gn:
            v = 1 + 0.3 * r
        elif name.endswith(".bias"):
            v = 0.1 * r
        elif name == "label_emb.weight":
            v = r
        else:
            fan_in = int(np.prod(p.shape[1:]))
            v = r / math.sqrt(fan_in)
        p.copy_(v.to(p.dtype))
    return model


# ---------------------------------------------------------------------------
# Diffusion: schedule and noised input
# ---------------------------------------------------------------------------

def noise_schedule(kind, T):
    """(betas, alphas_cumprod), float64 numpy, exactly as ADM.md §4."""
    if kind == "linear":
        scale = 1000 / T
        betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    elif kind == "cosine":
        abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)],
                         dtype=np.float64)
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return betas, np.cumprod(1.0 - betas)


def q_sample(x0, t, eps, alphas_cumprod):
    """x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps, coefficients computed in fp64 then cast
    to fp32 (as the official code). t: int or [N] ints."""
    x0 = torch.as_tensor(x0)
    eps = torch.as_tensor(eps)
    t = np.atleast_1d(np.asarray(t if not torch.is_tensor(t) else t.cpu().numpy(), dtype=np.int64))
    a = torch.from_numpy(np.sqrt(alphas_cumprod)[t]).float().to(x0.device)
    b = torch.from_numpy(np.sqrt(1.0 - alphas_cumprod)[t]).float().to(x0.device)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    return a.view(shape) * x0 + b.view(shape) * eps


# ---------------------------------------------------------------------------
# safetensors (written by hand: no external package)
# ---------------------------------------------------------------------------

_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.float64: "F64", torch.int64: "I64", torch.int32: "I32"}


def save_safetensors(path, tensors, metadata=None):
    """8-byte LE header length + JSON header + raw little-endian data; tensors tile the data
    in the given order. metadata values must be strings."""
    header, blobs, off = OrderedDict(), [], 0
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        raw = t.numpy().tobytes() if t.dtype != torch.bfloat16 else \
            t.view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)  # pad so the data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def load_safetensors(path):
    """-> (OrderedDict name -> tensor, metadata dict)."""
    np_types = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
                "I64": np.int64, "I32": np.int32}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n), object_pairs_hook=OrderedDict)
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = OrderedDict()
    for name, h in header.items():
        b, e = h["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=np_types[h["dtype"]]).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


# ---------------------------------------------------------------------------
# dump CLI: everything a C++ parity test needs
# ---------------------------------------------------------------------------

def flat_fp16_state_dict(sd, pad=3):
    """Released-checkpoint layout: every tensor is an fp16 view into one of two flat
    storages (1-D params / the rest), each starting `pad` elements in, so that every
    storage_offset is non-zero."""
    groups = {True: [k for k, v in sd.items() if v.dim() == 1],
              False: [k for k, v in sd.items() if v.dim() != 1]}
    out = OrderedDict()
    views = {}
    for one_d, keys in groups.items():
        total = pad + sum(sd[k].numel() for k in keys)
        flat = torch.zeros(total, dtype=torch.float16)
        off = pad
        for k in keys:
            n = sd[k].numel()
            flat[off:off + n] = sd[k].reshape(-1).to(torch.float16)
            views[k] = flat[off:off + n].view(sd[k].shape)
            off += n
    for k in sd:  # keep the state-dict order
        out[k] = views[k]
    return out


def _parse_ints(s):
    return [int(v) for v in s.split(",") if v.strip()]


def _reference_blocks(cfg, sd, x, t, y, blocks):
    """Outputs computed in float64 from the given weights, cast to float32."""
    m = build_unet(cfg).double()
    m.load_state_dict(OrderedDict((k, v.double()) for k, v in sd.items()))
    m.eval()
    with torch.no_grad():
        yy = None if y is None else torch.from_numpy(y)
        res = m.forward_blocks(torch.from_numpy(x).double(), torch.from_numpy(t).double(), yy, blocks)
    return {b: v.float().numpy() for b, v in res.items()}


def cmd_dump(args):
    torch.manual_seed(0)
    with open(args.config) as f:
        flags = json.load(f)
    cfg = UNetConfig(flags)
    os.makedirs(args.out, exist_ok=True)

    model = build_unet(cfg)
    randomize_(model, args.seed)
    sd = OrderedDict((k, v.detach().float().clone()) for k, v in model.state_dict().items())
    del model

    n = args.batch
    rng = np.random.default_rng(args.seed + 1)
    x = rng.standard_normal((n, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
                            ).astype(np.float32)
    ts = [float(v) for v in args.t.split(",")]
    if len(ts) == 1:
        ts *= n
    if len(ts) != n:
        raise SystemExit(f"--t gives {len(ts)} timesteps for batch {n}")
    t = np.array(ts, dtype=np.float32)
    y = None
    if cfg.n_classes is not None:
        labels = _parse_ints(args.labels) if args.labels else list(rng.integers(0, cfg.n_classes, n))
        if len(labels) == 1:
            labels *= n
        if len(labels) != n:
            raise SystemExit(f"--labels gives {len(labels)} labels for batch {n}")
        y = np.array(labels, dtype=np.int64)

    n_blk = num_blocks(build_unet(cfg, device="meta"))
    blocks = list(range(n_blk + 1)) if args.blocks == "all" else _parse_ints(args.blocks)

    # Weights in every format the C++ loader must read.
    save_safetensors(os.path.join(args.out, "weights.safetensors"), sd,
                     {"config": json.dumps(dict(cfg)), "format": "diffprobe-unet"})
    torch.save(sd, os.path.join(args.out, "weights_zip.pt"))
    torch.save(sd, os.path.join(args.out, "weights_legacy.pt"), _use_new_zipfile_serialization=False)
    flat = flat_fp16_state_dict(sd)
    torch.save(flat, os.path.join(args.out, "weights_flat_fp16.pt"),
               _use_new_zipfile_serialization=False)

    np.save(os.path.join(args.out, "input.npy"), x)
    np.save(os.path.join(args.out, "t.npy"), t)
    if y is not None:
        np.save(os.path.join(args.out, "labels.npy"), y)

    ref = _reference_blocks(cfg, sd, x, t, y, blocks)
    for b, v in ref.items():
        np.save(os.path.join(args.out, f"ref_b{b}.npy"), v)
    sd16 = OrderedDict((k, v.float()) for k, v in flat.items())  # fp16-rounded weights
    ref16 = _reference_blocks(cfg, sd16, x, t, y, blocks)
    for b, v in ref16.items():
        np.save(os.path.join(args.out, f"ref_fp16w_b{b}.npy"), v)

    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(cfg), f, indent=1)
    manifest = {"seed": args.seed, "batch": n, "t": ts,
                "labels": None if y is None else y.tolist(),
                "num_blocks": n_blk, "blocks": {str(b): list(v.shape) for b, v in ref.items()}}
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {args.out}: {len(sd)} tensors, blocks {sorted(ref)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="write weights, inputs and fp64 reference outputs")
    d.add_argument("--config", required=True, help="JSON file of official flags")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--batch", type=int, default=2)
    d.add_argument("--t", default="5", help="comma list, one timestep per sample (or one for all)")
    d.add_argument("--labels", default=None, help="comma list of class labels (class_cond only)")
    d.add_argument("--blocks", default="all", help="'all' or comma list of block numbers (0 = out)")
    d.add_argument("--out", required=True)
    d.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "dump":
        cmd_dump(args)


if __name__ == "__main__":
    main()
