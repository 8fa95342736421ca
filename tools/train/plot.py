#!/usr/bin/env python3
"""Figures for docs/model.md: the training loss curve and a grid of 64 samples.

  plot.py [--run-dir DIR] [--weights W.safetensors] [--sample-steps 100] [--out-dir DIR]

Samples use DDPM ancestral sampling with the EMA weights (from the run's ckpt.pt, or an
exported safetensors file). --sample-steps N respaces the 1000-step schedule to N evenly
spaced timesteps (as guided-diffusion's timestep_respacing "N"); the model still receives
the original timestep numbers. Variance: the posterior variance (beta tilde, "fixed small").
"""
import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
from adm_unet import build_unet, load_safetensors, noise_schedule  # noqa: E402

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss(csv_path, png):
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print("no loss rows yet")
        return
    step = [int(r["step"]) for r in rows]
    loss = [float(r["loss"]) for r in rows]
    smooth = [float(r["loss_smooth"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(step, loss, lw=0.6, alpha=0.4, label="loss (mean of 20 steps)")
    ax.plot(step, smooth, lw=1.5, label="EMA 0.99 of step loss")
    ax.set_yscale("log")
    ax.set_xlabel("step (batch 64)")
    ax.set_ylabel("eps MSE")
    ax.set_title("Fashion-MNIST ADM U-Net training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {png}")


def respaced_timesteps(T, n):
    """Evenly spaced kept timesteps, as guided-diffusion's space_timesteps(T, [n])."""
    if n >= T:
        return list(range(T))
    stride = (T - 1) / (n - 1)
    return sorted({round(i * stride) for i in range(n)})


@torch.no_grad()
def sample(model, diffusion, n, steps, seed, shape):
    _, abar_full = noise_schedule(diffusion["noise_schedule"], diffusion["diffusion_steps"])
    kept = respaced_timesteps(diffusion["diffusion_steps"], steps)
    abar = abar_full[kept]
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1 - abar / abar_prev
    post_var = betas * (1 - abar_prev) / (1 - abar)
    c_x0 = betas * np.sqrt(abar_prev) / (1 - abar)
    c_xt = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)

    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + shape, generator=g)
    for i in reversed(range(len(kept))):
        t = torch.full((n,), float(kept[i]))
        eps = model(x, t)
        a = float(abar[i])  # python floats: keep the tensors fp32
        x0 = ((x - (1 - a) ** 0.5 * eps) / a ** 0.5).clamp(-1, 1)
        x = float(c_x0[i]) * x0 + float(c_xt[i]) * x
        if i > 0:
            x = x + float(post_var[i]) ** 0.5 * torch.randn(x.shape, generator=g)
    return x.float()


def save_grid(x, png, ncol=8):
    imgs = ((x.clamp(-1, 1) + 1) / 2).numpy()[:, 0]
    n, h, w = imgs.shape
    nrow = (n + ncol - 1) // ncol
    grid = np.ones((nrow * (h + 2) + 2, ncol * (w + 2) + 2))
    for i, im in enumerate(imgs):
        r, c = divmod(i, ncol)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = im
    plt.imsave(png, grid, cmap="gray", vmin=0, vmax=1)
    print(f"wrote {png}")


def load_model(args):
    if args.weights:
        sd, meta = load_safetensors(args.weights)
        cfg, diffusion, step = json.loads(meta["config"]), json.loads(meta["diffusion"]), meta.get("step")
    else:
        ck = torch.load(os.path.join(args.run_dir, "ckpt.pt"), map_location="cpu")
        sd, cfg, diffusion, step = ck["ema"], ck["config"], ck["diffusion"], ck["step"]
    model = build_unet(cfg)
    model.load_state_dict(sd)
    return model.eval(), cfg, diffusion, step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=os.path.join(HERE, "runs", "fmnist"))
    p.add_argument("--weights", help="exported safetensors instead of the run's checkpoint")
    p.add_argument("--out-dir", default=None, help="default: the run dir")
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-samples", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out_dir or args.run_dir
    os.makedirs(out, exist_ok=True)

    csv_path = os.path.join(args.run_dir, "loss.csv")
    if os.path.exists(csv_path):
        plot_loss(csv_path, os.path.join(out, "loss.png"))
    if not args.no_samples:
        model, cfg, diffusion, step = load_model(args)
        shape = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        x = sample(model, diffusion, args.n, args.sample_steps, args.seed, shape)
        save_grid(x, os.path.join(out, "samples.png"))
        print(f"samples from EMA weights at step {step}, {args.sample_steps} steps")


if __name__ == "__main__":
    main()
