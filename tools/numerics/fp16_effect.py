#!/usr/bin/env python3
"""How far apart are a U-Net's block features in fp32 and under ADM's use_fp16 (docs/model_numerics.md)?

ADM's use_fp16 stores the weights of input_blocks, middle_block and output_blocks in fp16 and runs
those blocks with fp16 activations; GroupNorm (GroupNorm32) and the attention softmax compute in
fp32 and cast back; time_embed, label_emb and out stay fp32. PyTorch 1.13 has no fp16
convolution on the CPU, so this script emulates it: every weight of the three block lists is
rounded to fp16, and every module inside them rounds its inputs and outputs to fp16 (storage
precision) while computing in fp32 (what cuDNN does with fp32 accumulation).

It compares, per block, ||fp16 - fp32||_inf / max(1, ||fp32||_inf) and the cosine similarity of
the 2x2 average-pooled features (worst sample), and the same for the bf16 rounding that
diffprobe's --precision bf16 applies to convolution/matmul operands (emulated the same way).

  /usr/bin/python3 tools/numerics/fp16_effect.py [--weights models/fmnist_default.safetensors] [--t 50]
"""
import argparse
import copy
import gzip
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from adm_unet import build_unet, load_safetensors, noise_schedule, q_sample  # noqa: E402


def fmnist_images(n):
    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz", "rb") as f:
        data = f.read()
    x = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n].astype(np.float32) / 127.5 - 1
    return torch.from_numpy(np.pad(x, ((0, 0), (2, 2), (2, 2)), constant_values=-1.0)[:, None].copy())


def emulate(model, dtype):
    """A copy of the model whose block lists store weights and activations in `dtype`."""
    m = copy.deepcopy(model)
    rnd = lambda t: t.to(dtype).to(torch.float32) if torch.is_tensor(t) and t.is_floating_point() else t  # noqa: E731
    blocks = list(m.input_blocks) + [m.middle_block] + list(m.output_blocks)
    for blk in blocks:
        for mod in blk.modules():
            for p in mod.parameters(recurse=False):
                if not isinstance(mod, nn.GroupNorm):  # ADM converts conv/linear weights, not norms
                    p.data = rnd(p.data)
            mod.register_forward_pre_hook(lambda _m, args: tuple(rnd(a) for a in args))
            mod.register_forward_hook(lambda _m, _a, out: rnd(out))
    return m


def pooled(x, p=2):
    n, c, h, w = x.shape
    return x.double().reshape(n, c, p, h // p, p, w // p).mean(dim=(3, 5)).reshape(n, -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.path.join(ROOT, "models", "fmnist_default.safetensors"))
    ap.add_argument("--t", type=int, default=50)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    sd, meta = load_safetensors(a.weights)
    cfg = json.loads(meta["config"])
    model = build_unet(cfg)
    model.load_state_dict(sd)
    model.eval()
    x0 = fmnist_images(a.n)
    _, abar = noise_schedule("linear", 1000)
    t = torch.full((a.n,), a.t, dtype=torch.long)
    xt = q_sample(x0, t, torch.randn_like(x0), abar).float()
    res = {"t": a.t, "n": a.n, "weights": os.path.basename(a.weights), "blocks": {}}
    with torch.no_grad():
        ref = model.forward_blocks(xt, t.float(), blocks="all")
        outs = {name: emulate(model, dt).forward_blocks(xt, t.float(), blocks="all")
                for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16))}
    print(f"{'block':>5} {'fp16 rel.err':>12} {'fp16 cos':>9} {'bf16 rel.err':>12} {'bf16 cos':>9}")
    for b in sorted(ref, key=lambda b: (b == 0, b)):
        row = {}
        for name, out in outs.items():
            r, o = ref[b].double(), out[b].double()
            err = float((o - r).abs().max() / max(1.0, float(r.abs().max())))
            pr, po = pooled(r), pooled(o)
            cos = float(((pr * po).sum(1) / (pr.norm(dim=1) * po.norm(dim=1))).min())
            row[name] = {"rel_err": err, "pooled_cos_min": cos}
        res["blocks"][str(b)] = row
        print(f"{'out' if b == 0 else b:>5} {row['fp16']['rel_err']:12.2e} {row['fp16']['pooled_cos_min']:9.6f} "
              f"{row['bf16']['rel_err']:12.2e} {row['bf16']['pooled_cos_min']:9.6f}")
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
