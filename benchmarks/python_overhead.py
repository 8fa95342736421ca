#!/usr/bin/env python3
"""What the Python binding adds to a call: FeatureExtractor.extract from Python (array in, dict of
arrays out) against the same extractor's C++ extract() timed in C++ (diffprobe._time_extract_cpp,
no Python in the loop), on the bundled model at batch 256, alternating the two, best and median of
REPEATS each. Target: < 2 % overhead.

  PYTHONPATH=build/python /usr/bin/python3 benchmarks/python_overhead.py [--batch 256] [--repeats 5]
      [--t 10] [--block 9] [--pool avg:8] [--threads 0] [--json out.json]"""
import argparse
import json
import pathlib
import platform
import statistics
import time

import numpy as np

import diffprobe as dp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--t", type=int, default=10)
    ap.add_argument("--block", type=int, default=9)
    ap.add_argument("--pool", default="avg:8")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()

    model = dp.UNet.load(ROOT / "models" / "fmnist_default.safetensors")
    fx = dp.FeatureExtractor(model, timesteps=[a.t], blocks=[a.block], pool=a.pool, batch_size=64,
                             threads=a.threads)
    C, S = model.config.in_channels, model.config.image_size
    x = np.random.default_rng(0).uniform(-1, 1, (a.batch, C, S, S)).astype(np.float32)
    fx.extract(x)  # warm-up: memory plan, prepared weights, page faults
    dp._time_extract_cpp(fx, x, 1)
    py_s, cpp_s = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = fx.extract(x)
        py_s.append(time.perf_counter() - t0)
        del out
        cpp_s.append(dp._time_extract_cpp(fx, x, 1)[0])
    res = {
        "cpu": cpu_name(), "batch": a.batch, "t": a.t, "block": a.block, "pool": a.pool,
        "threads": a.threads or dp.default_threads(), "repeats": a.repeats,
        "python_s": py_s, "cpp_s": cpp_s,
        "python_best_s": min(py_s), "cpp_best_s": min(cpp_s),
        "python_median_s": statistics.median(py_s), "cpp_median_s": statistics.median(cpp_s),
    }
    res["overhead_best_pct"] = 100 * (res["python_best_s"] / res["cpp_best_s"] - 1)
    res["overhead_median_pct"] = 100 * (res["python_median_s"] / res["cpp_median_s"] - 1)
    print(f"{res['cpu']}, {res['threads']} threads, batch {a.batch}, t={a.t} block {a.block} {a.pool}")
    print(f"C++ extract:    best {res['cpp_best_s']:.4f} s  median {res['cpp_median_s']:.4f} s")
    print(f"Python extract: best {res['python_best_s']:.4f} s  median {res['python_median_s']:.4f} s")
    print(f"overhead: {res['overhead_best_pct']:+.2f} % (best), {res['overhead_median_pct']:+.2f} % (median)")
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
