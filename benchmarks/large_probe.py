#!/usr/bin/python3
"""A linear probe on a feature file larger than memory should need: peak RSS of `diffprobe probe` on a
synthetic 10 GB feature file (docs/distributed.md, "Heads on features larger than memory").

  benchmarks/large_probe.py --cli build/default/bin/diffprobe [--gb 10] [--work build/bench] [--epochs 1]

Writes WORK/large_train.safetensors (N rows of 4096 f32 = 16 KB, N = GB * 2^30 / 16 KB: 655,360 for
10 GB; ten classes, each a Gaussian around its own random mean, so the probe has something to learn)
and a 10,000-row test file the same way, streaming (never holding more than 64 MB), then runs
/usr/bin/time -v diffprobe probe --head linear --standardize and reports wall time, peak RSS and top-1.
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import time

import numpy as np

FEATURE = "t90.b24"
DIM = 4096


def write_features(path, rows, seed):
    if os.path.exists(path) and os.path.getsize(path) > rows * DIM * 4:
        return
    meta = {"format": "diffprobe.features", "format_version": "1", "weights_sha256": "", "config": "{}",
            "timesteps": "90", "blocks": "24", "pooling": "avg:2", "noise_seed": "0", "noise_draws": "1",
            "preprocessing": "synthetic (benchmarks/large_probe.py)", "preprocess": "", "copies": "1",
            "library": "synthetic"}
    fbytes, lbytes = rows * DIM * 4, rows * 8
    header = {"__metadata__": meta,
              FEATURE: {"dtype": "F32", "shape": [rows, DIM], "data_offsets": [0, fbytes]},
              "labels": {"dtype": "I64", "shape": [rows], "data_offsets": [fbytes, fbytes + lbytes]}}
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(1).standard_normal((10, DIM)).astype(np.float32) * 0.5
    labels = rng.integers(0, 10, size=rows)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text.encode())
        block = 4096
        for r0 in range(0, rows, block):
            y = labels[r0:r0 + block]
            x = means[y] + rng.standard_normal((len(y), DIM), dtype=np.float32)
            f.write(x.astype(np.float32).tobytes())
        f.write(labels.astype(np.int64).tobytes())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", default="build/default/bin/diffprobe")
    ap.add_argument("--gb", type=float, default=10.0)
    ap.add_argument("--work", default="build/bench")
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    rows = int(a.gb * (1 << 30) / (DIM * 4))
    train, test = os.path.join(a.work, "large_train.safetensors"), os.path.join(a.work, "large_test.safetensors")
    t0 = time.time()
    write_features(train, rows, 2)
    write_features(test, 10000, 3)
    print(f"feature files ready ({os.path.getsize(train) / 1e9:.2f} GB, {rows} rows) in {time.time() - t0:.0f} s",
          flush=True)
    cmd = ["/usr/bin/time", "-v", a.cli, "probe", "--train", train, "--test", test, "--feature", FEATURE, "--head",
           "linear", "--optimizer", "adamw", "--lr", "1e-3", "--epochs", str(a.epochs), "--standardize", "--batch",
           "256"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit(p.stdout[-3000:])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stdout).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([0-9:.]+)", p.stdout).group(1)
    top1 = re.search(r"top-1 ([0-9.]+)%", p.stdout).group(1)
    print(f"linear probe on {os.path.getsize(train) / 1e9:.2f} GB: peak RSS {rss / 1024:.0f} MB, wall {wall}, "
          f"top-1 {top1}%")
    json.dump({"train_bytes": os.path.getsize(train), "rows": rows, "peak_rss_mb": rss / 1024, "wall": wall,
               "top1_percent": float(top1), "epochs": a.epochs}, open(os.path.join(a.work, "large_probe.json"), "w"))


if __name__ == "__main__":
    main()
