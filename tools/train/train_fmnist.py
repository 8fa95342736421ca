#!/usr/bin/env python3
"""Train diffprobe's bundled default model: a small ADM U-Net on Fashion-MNIST.

The network is tests/reference/adm_unet.py (official ADM key names), so the exported
file loads in the C++ library like any other ADM checkpoint.

Image mapping (the C++ side implements the same rule):
  28x28 grey uint8 v  ->  float v/127.5 - 1  (in [-1, 1])
  -> pad 2 pixels on every side with -1.0 (the background) -> 32x32, 1 channel, NCHW.

Model flags (official names): image_size 32, in_channels 1, num_channels 32,
channel_mult "1,2,2", num_res_blocks 2, attention_resolutions "16,8", num_head_channels 32,
use_scale_shift_norm, resblock_updown, learn_sigma False, class_cond False, dropout 0.
Diffusion: linear schedule, T = 1000, eps prediction, plain MSE loss, t uniform in [0, T).
The model receives the integer t as is (no rescale_timesteps).
Optimiser: AdamW lr 2e-4 (linear warmup over 200 steps), weight decay 0, grad-norm clip 1,
batch 64, random horizontal flips, EMA decay min(0.999, (1+step)/(10+step)).

Usage:
  train_fmnist.py [--resume] [--max-steps N] [--max-minutes M] [--device auto|cpu|cuda]
  train_fmnist.py --export OUT.safetensors     (EMA weights of the latest checkpoint, fp32)
  train_fmnist.py --export-init OUT.safetensors  (the untrained step-0 weights of this seed: the
                                                  random-weights baseline of docs/results.md)
Run dir (git-ignored): tools/train/runs/fmnist/ with ckpt.pt (every 200 steps, atomic)
and loss.csv.
"""
import argparse
import copy
import csv
import gzip
import json
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
from adm_unet import build_unet, noise_schedule, q_sample, save_safetensors  # noqa: E402

DATA_DIR = "/usr/share/datasets/fashion-mnist"
RUN_DIR = os.path.join(HERE, "runs", "fmnist")

CONFIG = {
    "image_size": 32, "in_channels": 1, "num_channels": 32, "channel_mult": "1,2,2",
    "num_res_blocks": 2, "attention_resolutions": "16,8", "num_heads": 4,
    "num_head_channels": 32, "num_heads_upsample": -1, "use_scale_shift_norm": True,
    "resblock_updown": True, "use_new_attention_order": False, "learn_sigma": False,
    "class_cond": False, "dropout": 0.0,
}
DIFFUSION = {"noise_schedule": "linear", "diffusion_steps": 1000}

BATCH = 64
LR = 2e-4
WARMUP = 200
EMA_MAX = 0.999
CKPT_EVERY = 200
LOG_EVERY = 20


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def read_idx(path):
    """IDX file (gzipped) -> numpy array. Header: 2 zero bytes, type byte, ndim, then dims (BE)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    assert raw[0] == 0 and raw[1] == 0 and raw[2] == 0x08, "expected uint8 IDX"
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fmnist(split="train"):
    """-> (uint8 images [N, 28, 28], uint8 labels [N]); split 'train' or 't10k'."""
    x = read_idx(os.path.join(DATA_DIR, f"{split}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(DATA_DIR, f"{split}-labels-idx1-ubyte.gz"))
    return x, y


def to_model_input(u8):
    """uint8 [N, 28, 28] -> float32 [N, 1, 32, 32] in [-1, 1], background padding -1."""
    x = torch.as_tensor(u8).float().div(127.5).sub(1.0)
    return F.pad(x[:, None], (2, 2, 2, 2), value=-1.0)


# ---------------------------------------------------------------------------
# Training state
# ---------------------------------------------------------------------------

def lr_at(step):
    return LR * min(1.0, (step + 1) / WARMUP)


def ema_decay(step):
    return min(EMA_MAX, (1 + step) / (10 + step))


class Trainer:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(
            "cuda" if args.device == "auto" and torch.cuda.is_available()
            else ("cpu" if args.device == "auto" else args.device))
        torch.manual_seed(args.seed)
        self.model = build_unet(CONFIG).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)
        _, abar = noise_schedule(DIFFUSION["noise_schedule"], DIFFUSION["diffusion_steps"])
        self.abar = abar
        self.gen = torch.Generator().manual_seed(args.seed)  # data order, flips, t, noise
        self.step = 0
        self.epoch = 0
        self.perm = None
        self.pos = 0
        self.log = []  # rows of the CSV (dicts)
        self.images, _ = load_fmnist("train")

    # -- checkpoints ------------------------------------------------------
    def state(self):
        return {
            "config": CONFIG, "diffusion": DIFFUSION, "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "epoch": self.epoch, "perm": self.perm, "pos": self.pos, "log": self.log,
        }

    def save(self):
        path = os.path.join(self.args.run_dir, "ckpt.pt")
        torch.save(self.state(), path + ".tmp")
        os.replace(path + ".tmp", path)  # atomic: a crash never leaves a half-written ckpt

    def load(self, path):
        s = torch.load(path, map_location="cpu")
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        if s.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        self.step, self.epoch, self.perm, self.pos = s["step"], s["epoch"], s["perm"], s["pos"]
        self.log = s["log"]
        self.write_csv()  # drop rows logged after the checkpoint

    def write_csv(self):
        path = os.path.join(self.args.run_dir, "loss.csv")
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(self.log)
        os.replace(path + ".tmp", path)

    # -- one step ----------------------------------------------------------
    def next_batch(self):
        n = len(self.images)
        if self.perm is None or self.pos + BATCH > n:
            self.perm = torch.randperm(n, generator=self.gen)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos:self.pos + BATCH]
        self.pos += BATCH
        x = to_model_input(self.images[idx.numpy()])
        flip = torch.rand(BATCH, generator=self.gen) < 0.5
        x[flip] = x[flip].flip(-1)
        t = torch.randint(0, DIFFUSION["diffusion_steps"], (BATCH,), generator=self.gen)
        eps = torch.randn(x.shape, generator=self.gen)
        return x, t, eps

    def train_step(self):
        x0, t, eps = self.next_batch()
        xt = q_sample(x0, t, eps, self.abar).to(self.device)
        eps, t = eps.to(self.device), t.to(self.device)
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step)
        loss = F.mse_loss(self.model(xt, t.float()), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        d = ema_decay(self.step)
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                pe.mul_(d).add_(pm, alpha=1 - d)
        self.step += 1
        return loss.item()


CSV_FIELDS = ["step", "loss", "loss_smooth", "lr", "sec_per_step", "minutes"]


def train(args):
    os.makedirs(args.run_dir, exist_ok=True)
    tr = Trainer(args)
    ckpt = os.path.join(args.run_dir, "ckpt.pt")
    if args.resume and os.path.exists(ckpt):
        tr.load(ckpt)
        print(f"resumed from step {tr.step}", flush=True)
    else:
        tr.write_csv()
    n_params = sum(p.numel() for p in tr.model.parameters())
    print(f"device {tr.device}, threads {torch.get_num_threads()}, params {n_params}", flush=True)

    stop = {"flag": False}
    def on_signal(signum, _frame):  # finish the step, save, exit
        stop["flag"] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t_start = time.time()
    prev_minutes = tr.log[-1]["minutes"] if tr.log else 0.0
    smooth = tr.log[-1]["loss_smooth"] if tr.log else None
    acc, n_acc, t_log = 0.0, 0, time.time()
    tr.model.train()
    while not stop["flag"]:
        if args.max_steps is not None and tr.step >= args.max_steps:
            break
        if args.max_minutes is not None and time.time() - t_start > 60 * args.max_minutes:
            break
        loss = tr.train_step()
        acc += loss
        n_acc += 1
        smooth = loss if smooth is None else 0.99 * smooth + 0.01 * loss
        if tr.step % LOG_EVERY == 0:
            now = time.time()
            row = {"step": tr.step, "loss": round(acc / n_acc, 6), "loss_smooth": round(smooth, 6),
                   "lr": lr_at(tr.step - 1), "sec_per_step": round((now - t_log) / n_acc, 4),
                   "minutes": round(prev_minutes + (now - t_start) / 60, 3)}
            tr.log.append(row)
            with open(os.path.join(args.run_dir, "loss.csv"), "a", newline="") as f:
                csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow(row)
            print(f"step {row['step']} loss {row['loss']:.4f} smooth {row['loss_smooth']:.4f} "
                  f"{row['sec_per_step']:.3f} s/step", flush=True)
            acc, n_acc, t_log = 0.0, 0, now
        if tr.step % CKPT_EVERY == 0:
            tr.save()
            print(f"checkpoint at step {tr.step}", flush=True)
    tr.save()
    print(f"stopped at step {tr.step}, checkpoint saved", flush=True)


def export(args):
    ckpt = torch.load(os.path.join(args.run_dir, "ckpt.pt"), map_location="cpu")
    sd = {k: v.float() for k, v in ckpt["ema"].items()}
    meta = {
        "config": json.dumps(ckpt["config"]),
        "diffusion": json.dumps(ckpt["diffusion"]),
        "step": str(ckpt["step"]),
        "format": "diffprobe-unet",
        "dataset": "fashion-mnist",
        "image_mapping": "uint8/127.5-1, pad 2 px each side with -1 to 32x32, 1 channel",
    }
    save_safetensors(args.export, sd, meta)
    print(f"exported EMA weights at step {ckpt['step']} to {args.export}")


def export_init(args):
    """The network exactly as training starts it (PyTorch default init, seed args.seed)."""
    torch.manual_seed(args.seed)
    model = build_unet(CONFIG)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    meta = {
        "config": json.dumps(CONFIG),
        "diffusion": json.dumps(DIFFUSION),
        "step": "0",
        "format": "diffprobe-unet",
        "init": f"untrained: PyTorch default initialisation, torch.manual_seed({args.seed})",
        "image_mapping": "uint8/127.5-1, pad 2 px each side with -1 to 32x32, 1 channel",
    }
    save_safetensors(args.export_init, sd, meta)
    print(f"exported the untrained (step 0, seed {args.seed}) weights to {args.export_init}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", action="store_true", help="continue from runs/fmnist/ckpt.pt if present")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this total step count")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock limit for this run")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (the build machine has 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default=RUN_DIR, help="checkpoint and log folder")
    p.add_argument("--export", metavar="OUT.safetensors", help="export EMA weights and exit")
    p.add_argument("--export-init", metavar="OUT.safetensors",
                   help="export the untrained step-0 weights (random-weights baseline) and exit")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.export_init:
        export_init(args)
    elif args.export:
        export(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
