#!/usr/bin/python3
"""Scale figures of sharded extraction (docs/distributed.md), measured in one run on the machine at hand.

For the bundled model (Fashion-MNIST IDX input, block 9, t = 10) and the 256x256 ADM model (random
weights, a class folder of 256x256 JPEG files made from Fashion-MNIST, block 24, t = 90, batch 8), runs
`diffprobe extract` as ranks x threads = 1x1, 1x2 and 2x1 (mpirun -np 2) and records:
  images/s (rows over the slowest rank's extraction time, model loading excluded, and over the wall time),
  peak RSS per rank, the share of time the forward pass was busy (the rest: waiting for decoded images),
  scaling efficiency of ranks (2x1 against twice 1x1) and ranks against threads (2x1 against 1x2),
  the merge's throughput (diffprobe merge of the 2x1 run's parts),
and projects the paper's ImageNet extraction (1.33 M images, block 24, t = 90, 1024 channels pooled to 2x2:
16 KB per image) onto 1, 8 and 64 machines like this one. Every figure names the CPU.

  benchmarks/scale_extract.py --cli build/default/bin/diffprobe [--work build/bench] [--images-256 16]
      [--images-fmnist 2048] [--merge-gb 2] [--out docs/performance/scale_<cpu>.json]
  benchmarks/scale_extract.py --merge-only --out FILE.json    # redo only the merge figure and the projection

The merge's throughput is measured on synthetic parts of --merge-gb GB in all (4 parts, f32 rows of
16 KB, each with its part.* metadata and SHA-256), not on the extraction runs' few-megabyte parts,
whose merge time is all fixed cost.
"""
import argparse
import gzip
import json
import os
import re
import hashlib
import shutil
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"


def cpu_info():
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            k, _, v = line.partition(":")
            k, v = k.strip(), v.strip()
            if k in ("model name", "cpu family", "model", "flags") and k not in info:
                info[k] = v
    flags = info.pop("flags", "").split()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    return {"model_name": info.get("model name"), "family": int(info.get("cpu family", 0)),
            "model": int(info.get("model", 0)), "isa": isa, "cores": os.cpu_count()}


def make_model_256(work):
    path = os.path.join(work, "256x256_diffusion_uncond_random.safetensors")
    if os.path.exists(path):
        return path
    sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
    import torch  # noqa: F401
    from adm_unet import build_unet, randomize_, save_safetensors
    out = subprocess.run([CLI, "info", "--preset", "256x256_diffusion_uncond"], stdout=subprocess.PIPE, text=True,
                         check=True).stdout
    cfg = json.loads(out[out.index("\n{") + 1:out.index("\n}") + 2])
    print("making random weights for 256x256_diffusion_uncond ...", flush=True)
    model = randomize_(build_unet(cfg), 0)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(path, sd, {"config": json.dumps(cfg), "format": "diffprobe-unet"})
    return path


def make_jpeg_folder(work, n):
    """Fashion-MNIST test images upscaled to 256x256 (PIL bicubic), JPEG quality 90, one folder per class."""
    import numpy as np
    from PIL import Image
    folder = os.path.join(work, f"fmnist_jpeg256_{n}")
    if os.path.isdir(folder):
        return folder
    with gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")) as f:
        px = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(n):
        d = os.path.join(tmp, f"class_{labels[i]}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(px[i]).convert("RGB").resize((256, 256), Image.BICUBIC).save(
            os.path.join(d, f"{i:06}.jpg"), quality=90)
    os.replace(tmp, folder)
    return folder


SUMMARY = re.compile(r"(?:shard (\d+)/(\d+) )?(\d+) rows in ([0-9.]+) s \(([0-9.]+) rows/s\); the forward pass was "
                     r"busy ([0-9.]+) % of it \(waited ([0-9.]+) s for decoded images\); peak RSS (\d+) MB")


def run_extract(args_list, ranks, threads, out):
    for p in (out, out + ".partial", out + ".parts"):
        shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.remove(p))
    cmd = [CLI, "extract"] + args_list + ["--threads", str(threads), "--out", out]
    if ranks > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stdout[-3000:]}")
    ranks_out = [m.groups() for m in SUMMARY.finditer(p.stdout)]
    if len(ranks_out) != ranks:
        sys.exit(f"expected {ranks} summaries in:\n{p.stdout[-3000:]}")
    rows = sum(int(r[2]) for r in ranks_out)
    slowest = max(float(r[3]) for r in ranks_out)
    return {"ranks": ranks, "threads": threads, "rows": rows, "extract_s": slowest, "wall_s": wall,
            "images_per_s": rows / slowest, "images_per_s_wall": rows / wall,
            "busy_percent": [float(r[5]) for r in ranks_out], "wait_s": [float(r[6]) for r in ranks_out],
            "peak_rss_mb_per_rank": [int(r[7]) for r in ranks_out]}


def make_parts(out, gb, parts=4):
    """Synthetic parts of `out` (gb GB in all), as shards write them; returns the total bytes."""
    import numpy as np
    dim, row_bytes = 4096, 4096 * 4
    rows = int(gb * 1e9) // row_bytes // parts * parts
    per = rows // parts
    meta = {"format": "diffprobe.features", "format_version": "1", "weights_sha256": "", "config": "{}",
            "timesteps": "90", "blocks": "24", "pooling": "avg:2", "noise_seed": "0", "noise_draws": "1",
            "preprocessing": "synthetic (benchmarks/scale_extract.py)", "preprocess": "", "copies": "1",
            "library": "synthetic", "part.total_rows": str(rows)}
    d = out + ".parts"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    rng = np.random.default_rng(0)
    for i in range(parts):
        m = dict(meta, **{"part.shard": f"{i}/{parts}", "part.rows": f"{i * per},{(i + 1) * per}",
                          "part.data_sha256": "0" * 64})
        fbytes = per * row_bytes
        header = {"__metadata__": m, "t90.b24": {"dtype": "F32", "shape": [per, dim], "data_offsets": [0, fbytes]},
                  "labels": {"dtype": "I64", "shape": [per], "data_offsets": [fbytes, fbytes + per * 8]}}
        text = json.dumps(header, separators=(",", ":"))
        text += " " * ((8 - len(text) % 8) % 8)
        h = hashlib.sha256()
        path = os.path.join(d, f"part-{i:05}-of-{parts:05}.safetensors")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text.encode())
            for r0 in range(0, per, 4096):
                b = rng.standard_normal((min(4096, per - r0), dim), dtype=np.float32).tobytes()
                h.update(b)
                f.write(b)
            b = np.arange(i * per, (i + 1) * per, dtype=np.int64).tobytes()
            h.update(b)
            f.write(b)
        key = '"part.data_sha256":"'
        with open(path, "r+b") as f:
            f.seek(8 + text.index(key) + len(key))
            f.write(h.hexdigest().encode())
    return rows * (row_bytes + 8)


def measure_merge(work, gb):
    out = os.path.join(work, "merge_bench.safetensors")
    if os.path.exists(out):
        os.remove(out)
    total = make_parts(out, gb)
    subprocess.run(["sync"], check=True)
    t0 = time.time()
    subprocess.run([CLI, "merge", "--out", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    secs = time.time() - t0
    os.remove(out)
    print(f"  merge of {total / 1e9:.2f} GB in 4 parts: {secs:.1f} s = {total / 1e6 / secs:.0f} MB/s "
          "(verify every part's SHA-256, then stream into the output, fsync)", flush=True)
    return {"bytes": total, "seconds": secs, "mb_per_s": total / 1e6 / secs}


def project(result):
    """The paper's ImageNet extraction on machines like this one: each machine runs its best layout;
    machines share nothing but the output folder, so they add up, plus one merge."""
    big = result["workloads"]["256x256 ADM (JPEG folder, block 24, t=90, batch 8)"]
    per_machine = max(r["images_per_s"] for r in big["runs"])
    merge_rate = result["merge"]["mb_per_s"]
    images, bytes_per_image = 1_331_167, 1024 * 2 * 2 * 4
    proj = {}
    for machines in (1, 8, 64):
        extract_h = images / (per_machine * machines) / 3600
        merge_h = images * bytes_per_image / 1e6 / merge_rate / 3600
        proj[machines] = {"extract_hours": extract_h, "merge_hours": merge_h, "total_days": (extract_h + merge_h) / 24}
        print(f"  ImageNet (1.33 M images) on {machines} machine(s): {extract_h:.1f} h extraction + {merge_h * 60:.1f} "
              f"min merge = {(extract_h + merge_h) / 24:.2f} days", flush=True)
    result["imagenet_projection"] = {"images": images, "feature_bytes_per_image": bytes_per_image,
                                     "images_per_s_per_machine": per_machine, "merge_mb_per_s": merge_rate,
                                     "machines": proj}


def main():
    global CLI
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "default", "bin", "diffprobe"))
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--images-256", type=int, default=16)
    ap.add_argument("--images-fmnist", type=int, default=2048)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge-gb", type=float, default=2.0)
    ap.add_argument("--merge-only", action="store_true")
    a = ap.parse_args()
    CLI = a.cli
    os.makedirs(a.work, exist_ok=True)
    if a.merge_only:
        result = json.load(open(a.out))
        result["merge"] = measure_merge(a.work, a.merge_gb)
        project(result)
        json.dump(result, open(a.out, "w"), indent=1)
        print(f"updated {a.out}")
        return
    cpu = cpu_info()
    print(f"CPU: {cpu['model_name']} (family {cpu['family']}, model {cpu['model']}; {' '.join(cpu['isa'])}), "
          f"{cpu['cores']} cores", flush=True)
    result = {"cpu": cpu, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "workloads": {}}

    workloads = {
        "bundled (Fashion-MNIST IDX, block 9, t=10, batch 64)": [
            "--weights", os.path.join(ROOT, "models", "fmnist_default.safetensors"),
            "--input", os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"),
            "--labels", os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"), "--limit", str(a.images_fmnist),
            "--t", "10", "--blocks", "9", "--pool", "avg:8", "--batch", "64", "--chunk", "256"],
        "256x256 ADM (JPEG folder, block 24, t=90, batch 8)": [
            "--weights", make_model_256(a.work), "--input", make_jpeg_folder(a.work, a.images_256),
            "--t", "90", "--blocks", "24", "--pool", "avg:2", "--batch", "8", "--chunk", "8"],
    }
    for name, args_list in workloads.items():
        runs = []
        for ranks, threads in ((1, 1), (1, 2), (2, 1)):
            out = os.path.join(a.work, "scale.safetensors")
            extra = ["--no-merge"] if ranks > 1 else []
            r = run_extract(args_list + extra, ranks, threads, out)
            if ranks > 1:
                t0 = time.time()
                subprocess.run([CLI, "merge", "--out", out], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                r["merge_s"] = time.time() - t0
                r["merge_mb_per_s"] = os.path.getsize(out) / 1e6 / r["merge_s"]
            runs.append(r)
            print(f"  {name}: {ranks}x{threads}: {r['images_per_s']:.2f} img/s ({r['images_per_s_wall']:.2f} over the "
                  f"wall time), busy {r['busy_percent']} %, peak RSS {r['peak_rss_mb_per_rank']} MB", flush=True)
        one, threads2, ranks2 = runs
        entry = {"runs": runs,
                 "rank_scaling_efficiency": ranks2["images_per_s"] / (2 * one["images_per_s"]),
                 "ranks_over_threads": ranks2["images_per_s"] / threads2["images_per_s"]}
        result["workloads"][name] = entry
        print(f"  {name}: 2x1 / (2 * 1x1) = {entry['rank_scaling_efficiency']:.3f}, 2x1 / 1x2 = "
              f"{entry['ranks_over_threads']:.3f}", flush=True)

    result["merge"] = measure_merge(a.work, a.merge_gb)
    project(result)
    out = a.out or os.path.join(a.work, "scale.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
