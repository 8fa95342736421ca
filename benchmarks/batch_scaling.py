#!/usr/bin/python3
"""Cost as the batch grows (issue 21, item 6): images/s and peak RSS of bench_unet at several batch
sizes and precisions, each configuration in its own process (its peak RSS is its own), on the
machine at hand, with the CPU named.

  /usr/bin/python3 benchmarks/batch_scaling.py --bench build/default/benchmarks/bench_unet \\
      --preset 256x256_diffusion_uncond --block 24 --batch 1,8,32 --precision fp32,bf16 \\
      [--weights FILE.safetensors] [--repeats 3] --out docs/performance/batch_256_<cpu>.json

Random weights are made in memory (UNet::random) unless --weights is given; the time per batch is
the median over --repeats repetitions (each at least 0.3 s of passes) after the first pass (which packs the weights and records the
memory plan).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_torch import cpu_info, measured  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True)
    p.add_argument("--preset", default="fmnist_default")
    p.add_argument("--weights", default=None)
    p.add_argument("--block", default="9")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--precision", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu['model_name']} (family {cpu['family']}, model {cpu['model']}"
          f"{', ' + cpu['generation'] if cpu.get('generation') else ''}); ISA {' '.join(cpu['isa'])}", flush=True)
    rows = []
    print(f"{'prec':>8} {'batch':>5} {'s/batch':>9} {'img/s':>8} {'GFLOP/s':>8} {'of peak':>7} {'RSS MB':>8} "
          f"{'arena MiB':>9}", flush=True)
    for prec in a.precision.split(","):
        for n in (int(x) for x in a.batch.split(",")):
            # "int8" has per-image scales, "int8-cal" scales calibrated on the benchmark's input.
            mode = ["--precision=int8", "--int8=calibrated"] if prec == "int8-cal" else [f"--precision={prec}"]
            cmd = [a.bench, f"--preset={a.preset}", f"--blocks={a.block}", f"--batch={n}", f"--threads={a.threads}",
                   *mode, f"--benchmark_repetitions={a.repeats}", "--benchmark_min_time=0.3",
                   "--benchmark_format=json", "--benchmark_report_aggregates_only=false"]
            if a.weights:
                cmd.append(f"--weights={a.weights}")
            out, rss = measured(cmd)
            runs = [b for b in json.loads(out)["benchmarks"] if b.get("run_type") == "iteration"]
            s = statistics.median(b["real_time"] for b in runs) / 1e3
            row = {"precision": prec, "batch": n, "s_per_batch": s, "img_per_s": n / s,
                   "gflops": runs[0]["GFLOP"] / s, "of_adjacent_peak": statistics.median(b["of_peak"] for b in runs),
                   "peak_kind": ["fp32", "bf16", "int8"][int(runs[0].get("peak_kind", 0))],
                   "rss_mib": rss, "arena_mib": runs[0].get("arena_MiB"),
                   "first_pass_s": runs[0].get("first_pass_ms", 0) / 1e3, "times_s": [b["real_time"] / 1e3 for b in runs]}
            rows.append(row)
            print(f"{prec:>8} {n:>5} {s:9.3f} {n / s:8.2f} {row['gflops']:8.1f} {row['of_adjacent_peak']:6.1%} "
                  f"{rss:8.0f} {row['arena_mib'] or 0:9.0f}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    json.dump({"cpu": cpu, "preset": a.preset, "block": a.block, "threads": a.threads, "repeats": a.repeats,
               "weights": "random (in memory)" if not a.weights else os.path.basename(a.weights), "rows": rows},
              open(a.out, "w"), indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
