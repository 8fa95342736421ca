#!/usr/bin/env python3
"""The paper's study at Fashion-MNIST scale: every number and figure of docs/results.md.

All features come from the `diffprobe` command (C++), all heads are trained by `diffprobe probe`;
this script only orchestrates, caches and plots. Every test number uses the full 10,000-image
Fashion-MNIST test set.

Stages (each one caches its outputs under --work, default build/study; rerunning skips what is
done, so an interrupted study resumes):
  sweep      linear probe over blocks x t at pool 2x2, for the trained and the untrained U-Net,
             heads trained on the first --sweep-train training images (default 10,000), by
             `diffprobe sweep --probe trained` (tools/study/sweep_check.py compares its ridge probe)
  pool       pooling sizes 1, 2, 4, 8 at each model's best (t, block), full training set
  heads      linear, MLP, CNN, attention and fusion heads on the trained model, the first
             --heads-train training images (default 20,000)
  pixels     logistic regression on the raw pixels (the same C++ linear probe)
  precision  the trained model's best linear probe with features extracted in fp32, bf16 and int8
             (per-image scales, and scales calibrated on 256 training images), in one run
  attention  the attention head on the full training set and the whole 8x8 map
  report     results JSON -> docs/results/*.png and docs/results/results.json
  all        every stage in order

  /usr/bin/python3 tools/study/study.py all [--bin build/release/bin/diffprobe] [--threads 2]

Models: the bundled models/fmnist_default.safetensors ("trained") and the same network at its
untrained initialisation ("untrained", tools/train/train_fmnist.py --export-init, seed 0).
"""
import argparse
import gzip
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DATA = "/usr/share/datasets/fashion-mnist"
SPLITS = {
    "train": (f"{DATA}/train-images-idx3-ubyte.gz", f"{DATA}/train-labels-idx1-ubyte.gz", 60000, 0),
    "test": (f"{DATA}/t10k-images-idx3-ubyte.gz", f"{DATA}/t10k-labels-idx1-ubyte.gz", 10000, 1),
}  # images, labels, size, noise seed (train and test get different noise streams)
TS = [10, 50, 100, 200, 400, 700]
NUM_BLOCKS = 19
POOLS = [1, 2, 4, 8]
# The linear probe used everywhere (the paper's SGD recipe converges slowly on standardised
# 256-4096-dim features; AdamW + cosine reaches the same optimum in 30 epochs, see results.md).
LINEAR = ["--head", "linear", "--optimizer", "adamw", "--lr", "1e-3", "--schedule", "cosine",
          "--epochs", "30", "--standardize"]


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, flush=True)


class Study:
    def __init__(self, args):
        self.a = args
        self.work = os.path.abspath(args.work)
        self.res_dir = os.path.join(self.work, "results")
        os.makedirs(self.res_dir, exist_ok=True)
        self.models = {"trained": os.path.join(ROOT, "models", "fmnist_default.safetensors"),
                       "untrained": os.path.join(self.work, "untrained.safetensors")}

    # -- plumbing ----------------------------------------------------------------------------
    def run(self, cmd):
        t0 = time.time()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            sys.stderr.write(p.stdout + p.stderr)
            raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
        return p.stdout, time.time() - t0

    def ensure_untrained(self):
        path = self.models["untrained"]
        if not os.path.exists(path):
            subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "tools", "train", "train_fmnist.py"),
                            "--export-init", path, "--seed", "0"], check=True)
        return path

    def features(self, model, split, n, ts, blocks, pool, precision="fp32", calibration=None, tag=None):
        """Extract (cached) features t{t}.b{b} for the first n images of a split."""
        images, labels, size, seed = SPLITS[split]
        n = min(n, size)
        name = f"{model}_{split}{n}_t{'-'.join(map(str, ts))}_b{'-'.join(map(str, blocks))}_{pool.replace(':', '')}"
        if precision != "fp32":
            name += f"_{tag or precision}"
        out = os.path.join(self.work, "features", name + ".safetensors")
        if os.path.exists(out):
            return out
        os.makedirs(os.path.dirname(out), exist_ok=True)
        weights = self.ensure_untrained() if model == "untrained" else self.models[model]
        log(f"extract {name}")
        extra = ["--int8-calibration", calibration] if calibration else []
        _, dt = self.run([self.a.bin, "extract", "--weights", weights, "--input", images, "--labels", labels,
                          "--t", ",".join(map(str, ts)), "--blocks", ",".join(map(str, blocks)), "--pool", pool,
                          "--noise-seed", str(seed), "--batch", "64", "--threads", str(self.a.threads),
                          "--precision", precision, "--limit", str(n), "--out", out] + extra)
        self.timing(f"extract {name}", dt, n)
        return out

    def timing(self, what, seconds, n=None):
        with open(os.path.join(self.res_dir, "timings.tsv"), "a") as f:
            f.write(f"{what}\t{seconds:.1f}\t{n or ''}\n")

    def probe(self, tag, train, test, feature, head_args):
        """Train a head with `diffprobe probe` (cached by tag) and return its result dict."""
        out = os.path.join(self.res_dir, "probe", tag + ".json")
        if os.path.exists(out):
            return json.load(open(out))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        _, dt = self.run([self.a.bin, "probe", "--train", train, "--test", test, "--feature", feature,
                          "--threads", str(self.a.threads), "--json", out + ".tmp"] + head_args)
        r = json.load(open(out + ".tmp"))
        r["seconds"] = round(dt, 1)
        r["args"] = head_args
        json.dump(r, open(out + ".tmp", "w"))
        os.replace(out + ".tmp", out)
        log(f"probe {tag}: top-1 {100 * r['top1']:.2f}% ({dt:.0f} s)")
        return r

    def save(self, name, obj):
        path = os.path.join(self.res_dir, name + ".json")
        json.dump(obj, open(path + ".tmp", "w"), indent=1)
        os.replace(path + ".tmp", path)

    def load(self, name):
        path = os.path.join(self.res_dir, name + ".json")
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: run the stage that makes it first")
        return json.load(open(path))

    # -- stages ------------------------------------------------------------------------------
    def sweep(self, model):
        """The grid by `diffprobe sweep --probe trained`: the same features (noise seeds 0 and 1,
        one forward per (t, batch) for all 19 blocks) and the same linear probe (LINEAR's recipe is
        the sweep's trained probe) as `extract` + `probe` per cell; resumable in its own folder."""
        blocks = list(range(1, NUM_BLOCKS + 1))
        n = self.a.sweep_train
        weights = self.ensure_untrained() if model == "untrained" else self.models[model]
        images, labels, _, _ = SPLITS["train"]
        test_images, test_labels, _, _ = SPLITS["test"]
        out = os.path.join(self.work, "sweeps", f"{model}_n{n}_trained")
        log(f"sweep {model} ({len(TS)} t x {NUM_BLOCKS} blocks, trained probe) into {out}")
        _, dt = self.run([self.a.bin, "sweep", "--weights", weights, "--train", images, "--train-labels", labels,
                          "--test", test_images, "--test-labels", test_labels, "--t", ",".join(map(str, TS)),
                          "--blocks", "all", "--pool", "avg:2", "--probe", "trained", "--noise-seed", "0",
                          "--test-noise-seed", "1", "--batch", "64", "--limit-train", str(n),
                          "--limit-test", "10000", "--threads", str(self.a.threads), "--out", out])
        self.timing(f"sweep {model} n{n}", dt, n)
        grid = json.load(open(os.path.join(out, "sweep.json")))
        acc = np.full((len(TS), len(blocks)), np.nan)
        for c in grid["cells"]:
            acc[TS.index(c["t"]), blocks.index(c["block"])] = round(c["top1"], 4)
        i, j = np.unravel_index(np.nanargmax(acc), acc.shape)
        res = {"model": model, "train_images": n, "test_images": 10000, "pool": "avg:2", "t": TS,
               "blocks": blocks, "top1": acc.tolist(), "best": {"t": TS[i], "block": blocks[j],
                                                                 "top1": float(acc[i, j])}}
        self.save(f"sweep_{model}", res)
        log(f"sweep {model}: best t={TS[i]} block={blocks[j]} top-1 {100 * acc[i, j]:.2f}% ({n} training images)")
        return res

    def pooled(self, model, split, n, t, b, p):
        """Features t{t}.b{b} at adaptive average pool p: extracted once at the largest pool size
        (8, or the map itself when smaller) and averaged down in numpy. Adaptive average pooling
        of a map whose size the pool divides is a plain block mean, so avg:p of avg:8 is avg:p of
        the map (up to float rounding order)."""
        base = self.features(model, split, n, [t], [b], "avg:8")
        if p == 8:
            return base
        out = base.replace("_avg8.safetensors", f"_avg{p}_from8.safetensors")
        if os.path.exists(out):
            return out
        tensors, meta = read_safetensors(base)
        x = tensors[f"t{t}.b{b}"].astype(np.float64)
        n_, c, h, w = x.shape
        if h % p or w % p:
            raise SystemExit(f"pool {p} does not divide the {h}x{w} map of t{t}.b{b}")
        y = x.reshape(n_, c, p, h // p, p, w // p).mean(axis=(3, 5)).astype(np.float32)
        tensors[f"t{t}.b{b}"] = y
        meta = dict(meta, pooling=f"avg:{p} (from avg:8 by block means)")
        write_safetensors(out, tensors, meta)
        return out

    def subset(self, path, n):
        """The first n samples of a feature file."""
        out = path.replace(".safetensors", f"_first{n}.safetensors")
        if os.path.exists(out):
            return out
        tensors, meta = read_safetensors(path)
        write_safetensors(out, {k: v[:n] for k, v in tensors.items()}, meta)
        return out

    def pool(self, model):
        best = self.load(f"sweep_{model}")["best"]
        t, b = best["t"], best["block"]
        rows = []
        for p in POOLS:
            tr = self.pooled(model, "train", 60000, t, b, p)
            te = self.pooled(model, "test", 10000, t, b, p)
            r = self.probe(f"pool_{model}_t{t}_b{b}_avg{p}", tr, te, f"t{t}.b{b}", LINEAR)
            rows.append({"pool": p, "top1": r["top1"], "top5": r["top5"]})
        best_pool = max(rows, key=lambda r: r["top1"])
        self.save(f"pool_{model}", {"model": model, "t": t, "block": b, "train_images": 60000,
                                    "rows": rows, "best": best_pool})
        return rows

    def heads(self):
        """Every head on the same data: the first --heads-train training images (the attention-style
        heads train ~20x slower than the linear probe on these 2 cores), the full test set."""
        sw = self.load("sweep_trained")
        pl = self.load("pool_trained")
        t, b, p = pl["t"], pl["block"], pl["best"]["pool"]
        n = self.a.heads_train
        feat = f"t{t}.b{b}"
        te_of = lambda pp: self.pooled("trained", "test", 10000, t, b, pp)  # noqa: E731
        tr_of = lambda pp: self.subset(self.pooled("trained", "train", 60000, t, b, pp), n)  # noqa: E731
        adamw = ["--optimizer", "adamw", "--schedule", "cosine"]
        specs = [  # name, pool, args
            ("linear", p, LINEAR),
            ("mlp:1024_512", p, ["--head", "mlp:1024_512", "--lr", "1e-3", "--epochs", "20", "--standardize"] + adamw),
            ("cnn", 4, ["--head", "cnn", "--lr", "1e-3", "--epochs", "10"] + adamw),
            ("attention", 4, ["--head", "attention", "--attention-dim", "128", "--lr", "5e-4", "--epochs", "10"] + adamw),
        ]
        rows = []
        for name, pp, args in specs:
            r = self.probe(f"heads_n{n}_{name.replace(':', '')}_{feat}_avg{pp}", tr_of(pp), te_of(pp), feat, args)
            rows.append({"head": name, "feature": feat, "pool": pp, "top1": r["top1"], "top5": r["top5"],
                         "seconds": r["seconds"], "args": args})
        # Fusion (DifFormer-style, one tokenizer per (t, block)) over a t x block grid: the three best
        # blocks of the sweep at the best t, at the best t and at the second-best t for the best block,
        # each globally pooled (one token per (t, block) plus the CLS token).
        acc = np.array(sw["top1"])
        ti = sw["t"].index(t)
        top_blocks = sorted(sw["blocks"][j] for j in np.argsort(-acc[ti])[:3])
        if b not in top_blocks:
            top_blocks = sorted(top_blocks[:2] + [b])
        t2 = sw["t"][int(np.argsort(-acc[:, sw["blocks"].index(b)])[1])]
        fp = 1
        trs = [self.features("trained", "train", 60000, [tt], top_blocks, f"avg:{fp}") for tt in (t, t2)]
        tes = [self.features("trained", "test", 10000, [tt], top_blocks, f"avg:{fp}") for tt in (t, t2)]
        names = [f"t{tt}.b{bb}" for tt in (t, t2) for bb in top_blocks]
        tag = f"t{t}-{t2}_b{'-'.join(map(str, top_blocks))}"
        ftr = self.subset(self.merge(trs, f"fusion_train60000_{tag}_avg{fp}"), n)
        fte = self.merge(tes, f"fusion_test10000_{tag}_avg{fp}")
        args = ["--head", "fusion", "--attention-dim", "128", "--lr", "5e-4", "--epochs", "10"] + adamw
        r = self.probe(f"heads_n{n}_fusion_{tag}_avg{fp}", ftr, fte, ",".join(names), args)
        rows.append({"head": "fusion", "feature": ",".join(names), "pool": fp, "top1": r["top1"], "top5": r["top5"],
                     "seconds": r["seconds"], "args": args})
        self.save("heads", {"t": t, "block": b, "train_images": n, "test_images": 10000, "rows": rows})
        return rows

    def merge(self, paths, name):
        """One feature file holding the features of several files (same images, same labels)."""
        out = os.path.join(self.work, "features", name + ".safetensors")
        if os.path.exists(out):
            return out
        tensors, meta, ts, bs = {}, None, [], []
        for p in paths:
            t, m = read_safetensors(p)
            meta = meta or dict(m)
            ts += [int(x) for x in m["timesteps"].split(",")]
            bs += [int(x) for x in m["blocks"].split(",")]
            tensors.update(t)
        meta["timesteps"] = ",".join(map(str, sorted(set(ts))))
        meta["blocks"] = ",".join(map(str, sorted(set(bs))))
        write_safetensors(out, tensors, meta)
        return out

    def attention_full(self):
        """The attention head as the paper uses it (the whole map, pool <= 16 leaves 8x8 as is)
        on the full training set; width 128 instead of 1024 and 8 epochs to fit 2 CPU cores."""
        pl = self.load("pool_trained")
        t, b = pl["t"], pl["block"]
        feat = f"t{t}.b{b}"
        args = ["--head", "attention", "--attention-dim", "128", "--lr", "5e-4", "--epochs", "8",
                "--optimizer", "adamw", "--schedule", "cosine"]
        r = self.probe(f"attention_full_{feat}_avg8", self.pooled("trained", "train", 60000, t, b, 8),
                       self.pooled("trained", "test", 10000, t, b, 8), feat, args)
        res = {"head": "attention", "feature": feat, "pool": 8, "train_images": 60000, "top1": r["top1"],
               "top5": r["top5"], "seconds": r["seconds"], "args": args}
        self.save("attention_full", res)
        return res

    def best_cell(self):
        """The trained model's best (t, block, pool): from this study's pool stage, else the committed one."""
        path = os.path.join(self.res_dir, "pool_trained.json")
        pl = json.load(open(path if os.path.exists(path) else os.path.join(ROOT, "docs", "results", "results.json")))
        pl = pl.get("pool_trained", pl)
        return pl["t"], pl["block"], pl["best"]["pool"]

    def precision(self):
        """The best linear probe with fp32, bf16 and int8 features (same noise, same head recipe, one run)."""
        t, b, p = self.best_cell()
        feat = f"t{t}.b{b}"
        images, _, _, _ = SPLITS["train"]
        cal = os.path.join(self.work, "features", f"trained_int8_t{t}_b{b}.json")
        if not os.path.exists(cal):
            os.makedirs(os.path.dirname(cal), exist_ok=True)
            self.run([self.a.bin, "calibrate", "--weights", self.models["trained"], "--input", images,
                      "--images", "256", "--t", str(t), "--blocks", str(b), "--threads", str(self.a.threads),
                      "--out", cal])
        modes = {"fp32": ("fp32", None), "bf16": ("bf16", None), "int8": ("int8", None),
                 "int8_calibrated": ("int8", cal)}
        res = {"t": t, "block": b, "pool": p, "calibration": "256 training images, max", "modes": {}}
        ref = None
        for mode, (prec, calibration) in modes.items():
            files = {split: self.features("trained", split, n, [t], [b], f"avg:{p}", precision=prec,
                                          calibration=calibration, tag=mode)
                     for split, n in (("train", 60000), ("test", 10000))}
            r = self.probe(f"precision_{mode}_{feat}_avg{p}", files["train"], files["test"], feat, LINEAR)
            a = read_safetensors(files["test"])[0][feat].reshape(10000, -1).astype(np.float64)
            if ref is None:
                ref = a
            cos = (a * ref).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref, axis=1))
            res["modes"][mode] = {"top1": r["top1"], "top5": r["top5"], "cos_min": float(cos.min()),
                                  "cos_mean": float(cos.mean())}
            log(f"{mode}: top-1 {100 * r['top1']:.2f}%, test-feature cosine to fp32 min {cos.min():.6f}")
        self.save("precision", res)
        return res

    def pixels(self):
        """Logistic regression on raw pixels: the 28x28 images as 784 features in [-1, 1]."""
        files = {}
        for split in ("train", "test"):
            images, labels, size, _ = SPLITS[split]
            out = os.path.join(self.work, "features", f"pixels_{split}.safetensors")
            if not os.path.exists(out):
                x = read_idx(images).astype(np.float32) / 127.5 - 1.0
                y = read_idx(labels).astype(np.int64)
                meta = {"format": "diffprobe.features", "format_version": "1", "timesteps": "0", "blocks": "0",
                        "pooling": "none", "preprocessing": "raw 28x28 pixels, uint8/127.5-1",
                        "weights_sha256": "", "config": "{}", "noise_seed": "0", "noise_draws": "1",
                        "library": "tools/study/study.py"}
                os.makedirs(os.path.dirname(out), exist_ok=True)
                write_safetensors(out, {"t0.b0": x.reshape(len(x), 1, 28, 28), "labels": y}, meta)
            files[split] = out
        r = self.probe("pixels_linear", files["train"], files["test"], "t0.b0", LINEAR)
        self.save("pixels", {"train_images": 60000, "top1": r["top1"], "top5": r["top5"]})
        return r

    def report(self):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        out_dir = os.path.join(ROOT, "docs", "results")
        os.makedirs(out_dir, exist_ok=True)
        summary = {}
        fig, axes = plt.subplots(2, 1, figsize=(11, 6.5), constrained_layout=True)
        for ax, model in zip(axes, ("trained", "untrained")):
            sw = self.load(f"sweep_{model}")
            acc = 100 * np.array(sw["top1"])
            mid = (np.nanmin(acc) + np.nanmax(acc)) / 2
            heatmap(fig, ax, acc, sw, "{:.1f}", "viridis", np.nanmin(acc), np.nanmax(acc),
                    lambda v: "white" if v < mid else "black")
            ax.set_xlabel("block (1-based, paper numbering; 10 = middle)")
            b = sw["best"]
            ax.set_title(f"{model} U-Net: linear-probe top-1 % (pool 2x2, {sw['train_images']} training images, "
                         f"10,000 test images); best t={b['t']} block={b['block']}: {100 * b['top1']:.2f}%")
            summary[f"sweep_{model}"] = sw
        fig.savefig(os.path.join(out_dir, "sweep_heatmap.png"), dpi=110)
        plt.close(fig)

        # What diffusion training adds, per (t, block): trained minus untrained.
        tr, un = self.load("sweep_trained"), self.load("sweep_untrained")
        gain = 100 * (np.array(tr["top1"]) - np.array(un["top1"]))
        fig, ax = plt.subplots(figsize=(11, 3.4), constrained_layout=True)
        lim = np.abs(gain).max()
        heatmap(fig, ax, gain, tr, "{:+.1f}", "RdBu", -lim, lim, lambda v: "black")
        ax.set_xlabel("block")
        ax.set_title("gain from diffusion training: trained minus untrained linear-probe top-1 (points, pool 2x2)")
        fig.savefig(os.path.join(out_dir, "sweep_gain.png"), dpi=110)
        plt.close(fig)

        fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
        width = 0.38
        for k, model in enumerate(("trained", "untrained")):
            pl = self.load(f"pool_{model}")
            xs = np.arange(len(pl["rows"])) + (k - 0.5) * width
            vals = [100 * r["top1"] for r in pl["rows"]]
            ax.bar(xs, vals, width, label=f"{model} (t={pl['t']}, block {pl['block']})")
            for x, v in zip(xs, vals):
                ax.text(x, v + 0.2, f"{v:.1f}", ha="center", fontsize=7)
            summary[f"pool_{model}"] = pl
        ax.set_xticks(range(len(POOLS)), [f"{p}x{p}" for p in POOLS])
        ax.set_xlabel("adaptive average pooling")
        ax.set_ylabel("linear-probe top-1 %")
        lo = min(100 * r["top1"] for m in ("trained", "untrained") for r in self.load(f"pool_{m}")["rows"])
        ax.set_ylim(max(0, lo - 5), 100)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("Pooling size at each model's best (t, block), 60,000 training images", fontsize=9)
        fig.savefig(os.path.join(out_dir, "pooling.png"), dpi=110)
        plt.close(fig)

        for name in ("heads", "pixels", "precision", "attention_full"):
            if os.path.exists(os.path.join(self.res_dir, name + ".json")):
                summary[name] = self.load(name)
        timings = os.path.join(self.res_dir, "timings.tsv")
        if os.path.exists(timings):
            summary["timings"] = [line.rstrip("\n").split("\t") for line in open(timings)]
        json.dump(summary, open(os.path.join(out_dir, "results.json"), "w"), indent=1)
        self.print_summary(summary)
        with open(os.path.join(out_dir, "tables.md"), "w") as f:
            f.write(self.markdown(summary))
        print(f"wrote {out_dir}/sweep_heatmap.png, pooling.png, results.json, tables.md")

    def markdown(self, s):
        """The tables of docs/results.md, generated from the results."""
        md = []
        for m in ("trained", "untrained"):
            if f"sweep_{m}" not in s:
                continue
            sw = s[f"sweep_{m}"]
            md.append(f"\n**{m} U-Net, linear probe top-1 % over t x block** (pool 2x2, "
                      f"{sw['train_images']} training images, 10,000 test images)\n")
            md.append("| t \\ block | " + " | ".join(map(str, sw["blocks"])) + " |")
            md.append("|---" * (len(sw["blocks"]) + 1) + "|")
            acc = np.array(sw["top1"]) * 100
            for i, t in enumerate(sw["t"]):
                best = acc[i].max()
                md.append(f"| {t} | " + " | ".join((f"**{v:.1f}**" if v == best else f"{v:.1f}") for v in acc[i]) + " |")
        md.append("\n**Pooling at each model's best (t, block)** (60,000 training images)\n")
        md.append("| model | t | block | 1x1 | 2x2 | 4x4 | 8x8 |")
        md.append("|---|---|---|---|---|---|---|")
        for m in ("trained", "untrained"):
            if f"pool_{m}" in s:
                pl = s[f"pool_{m}"]
                md.append(f"| {m} | {pl['t']} | {pl['block']} | " +
                          " | ".join(f"{100 * r['top1']:.2f}" for r in pl["rows"]) + " |")
        if "heads" in s:
            h = s["heads"]
            md.append(f"\n**Heads** ({h['train_images']} training images, 10,000 test images)\n")
            md.append("| head | features | pool | top-1 % | top-5 % | training time (s) |")
            md.append("|---|---|---|---|---|---|")
            for r in h["rows"]:
                md.append(f"| {r['head']} | {r['feature']} | {r['pool']}x{r['pool']} | {100 * r['top1']:.2f} | "
                          f"{100 * r['top5']:.2f} | {r['seconds']:.0f} |")
        if "attention_full" in s:
            r = s["attention_full"]
            md.append(f"\nAttention head on all 60,000 training images, whole {r['pool']}x{r['pool']} map: "
                      f"top-1 {100 * r['top1']:.2f} %, top-5 {100 * r['top5']:.2f} % ({r['seconds']:.0f} s).")
        return "\n".join(md) + "\n"

    def print_summary(self, s):
        print("\n== Fashion-MNIST test set (10,000 images)")
        if "pixels" in s:
            print(f"raw pixels, logistic regression           {100 * s['pixels']['top1']:6.2f}%")
        for m in ("untrained", "trained"):
            if f"pool_{m}" in s:
                pl = s[f"pool_{m}"]
                print(f"{m:>9} U-Net, linear, t={pl['t']:<3} b={pl['block']:<2} pool {pl['best']['pool']}x{pl['best']['pool']}"
                      f"   {100 * pl['best']['top1']:6.2f}%")
        for r in s.get("heads", {}).get("rows", []):
            print(f"  trained, {r['head']:<14} {r['feature']:<28} {100 * r['top1']:6.2f}%  ({r['seconds']:.0f} s)")


def heatmap(fig, ax, values, sweep, fmt, cmap, vmin, vmax, text_color):
    """A t x block grid of numbers, each cell written in it, with a colour bar."""
    im = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(sweep["blocks"])), sweep["blocks"])
    ax.set_yticks(range(len(sweep["t"])), sweep["t"])
    ax.set_ylabel("t")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=6.5,
                    color=text_color(values[i, j]))
    fig.colorbar(im, ax=ax, shrink=0.9)


# -- file formats ------------------------------------------------------------------------------
def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


_DT = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        meta = header.pop("__metadata__", {})
        out = {}
        for name, h in header.items():
            a, b = h["data_offsets"]
            f.seek(base + a)
            out[name] = np.frombuffer(f.read(b - a), dtype=_DT[h["dtype"]]).reshape(h["shape"])
    return out, meta


def write_safetensors(path, tensors, meta):
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
             np.dtype(np.int32): "I32"}
    header, off, blobs = {"__metadata__": meta}, 0, []
    for name, t in tensors.items():
        raw = np.ascontiguousarray(t).tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for blob in blobs:
            f.write(blob)
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["sweep", "pool", "heads", "pixels", "precision", "attention", "report", "all"])
    p.add_argument("--model", choices=["trained", "untrained", "both"], default="both",
                   help="for sweep and pool")
    p.add_argument("--bin", default=os.path.join(ROOT, "build", "release", "bin", "diffprobe"))
    p.add_argument("--work", default=os.path.join(ROOT, "build", "study"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--sweep-train", type=int, default=10000, help="training images for the sweep's probes")
    p.add_argument("--heads-train", type=int, default=20000, help="training images for the head comparison")
    a = p.parse_args()
    s = Study(a)
    models = ["trained", "untrained"] if a.model == "both" else [a.model]
    if a.stage in ("sweep", "all"):
        for m in models:
            s.sweep(m)
    if a.stage in ("pool", "all"):
        for m in models:
            s.pool(m)
    if a.stage in ("pixels", "all"):
        s.pixels()
    if a.stage in ("heads", "all"):
        s.heads()
    if a.stage in ("precision", "all"):
        s.precision()
    if a.stage in ("attention", "all"):
        s.attention_full()
    if a.stage in ("report", "all"):
        s.report()


if __name__ == "__main__":
    main()
