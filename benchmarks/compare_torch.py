#!/usr/bin/env python3
"""diffprobe against PyTorch on the same machine, in one run (../shared/spec/BENCHMARK.md).

Same weights (random, seeded, every tensor non-trivial), same input, same threads, warm, median
of --repeats runs. diffprobe runs as benchmarks/bench_unet (Google Benchmark); PyTorch runs this
project's reference model (tests/reference/adm_unet.py, the ADM code's structure) loaded the way
ADM's scripts load it (torch.load + load_state_dict), under torch.no_grad(). Each configuration
runs in a fresh process so that its peak resident memory (ru_maxrss) is its own.

  /usr/bin/python3 benchmarks/compare_torch.py --preset 256x256_diffusion_uncond \\
      --blocks 24,out --batch 1,8 --precision fp32,bf16 --per-block
  /usr/bin/python3 benchmarks/compare_torch.py --preset fmnist_default --blocks 12,out --batch 256

Prints a table of seconds per batch, ratios, GFLOP/s, fraction of the measured FMA peak
(benchmarks/bench_peak, once at the start: "of peak"; and the same limit measured by bench_unet
just before and after each of its timed passes, median over passes: "of adj.") and peak RSS,
checks that both computed the same block output, and writes --out (JSON). "1st": the first
forward of each process (ours: primitives created and the memory plan recorded; PyTorch: its
warm-up run), what a one-off call costs. With --per-block it also times each block inside the
forward and plots them (--plot PNG).

The second baseline, ONNX Runtime (CPU, all graph optimisations; --baselines torch,ort): the same
reference model with the same weights, exported per (block, batch) by torch.onnx.export (opset 17;
the exported graph stops at the requested block, as the others do) and run by npm's
onnxruntime-node (benchmarks/onnx/run_ort.js). Install it once with
  (cd benchmarks/onnx && npm ci --ignore-scripts)
(--ignore-scripts: the package's post-install step only downloads GPU binaries; the CPU library
ships inside the package). Its time, ratio and error go into every row beside PyTorch's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))


def measured(cmd, env=None):
    """Run cmd under /usr/bin/time -v: (stdout, peak RSS MiB)."""
    full = ["/usr/bin/time", "-v"] + cmd
    p = subprocess.run(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr[-4000:])
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    rss = None
    for line in p.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split(":")[1]) / 1024
    return p.stdout, rss


def cpu_info():
    """The CPU every figure is about (BENCHMARK.md: name the CPU): model, family/model/stepping,
    the ISA extensions that decide which kernels run, and the cores Linux reports."""
    info = {"model_name": "", "vendor": "", "family": None, "model": None, "stepping": None, "isa": [],
            "logical_cpus": os.cpu_count()}
    wanted = ["sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "sha_ni"]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" not in line:
                    if info["model_name"]:
                        break  # the first processor's block is enough
                    continue
                k, v = (x.strip() for x in line.split(":", 1))
                if k == "model name":
                    info["model_name"] = v
                elif k == "vendor_id":
                    info["vendor"] = v
                elif k == "cpu family":
                    info["family"] = int(v)
                elif k == "model":
                    info["model"] = int(v)
                elif k == "stepping":
                    info["stepping"] = int(v) if v.isdigit() else v
                elif k == "flags":
                    flags = set(v.split())
                    info["isa"] = [w for w in wanted if w in flags]
    except OSError:
        pass
    # AMD family 25 (0x19) is Zen 3 (models 0x00-0x0f, 0x20-0x5f) or Zen 4 (0x10-0x1f, 0x60-0xaf);
    # family 26 (0x1a) is Zen 5. The name is a hint; the ISA list is what decides.
    fam, mod = info["family"], info["model"]
    if info["vendor"] == "AuthenticAMD" and fam is not None and mod is not None:
        info["generation"] = ("Zen 5" if fam == 26 else
                              "Zen 4" if fam == 25 and (0x10 <= mod <= 0x1f or 0x60 <= mod <= 0xaf) else
                              "Zen 3" if fam == 25 else "")
    return info


def preset_config(cli, preset):
    out = subprocess.run([cli, "info", "--preset", preset], stdout=subprocess.PIPE, text=True, check=True).stdout
    start, end = out.index("\n{") + 1, out.index("\n}") + 2
    return json.loads(out[start:end])


def make_files(args, cfg):
    """Random weights as safetensors (diffprobe) and .pt (PyTorch), and the input, cached."""
    import numpy as np
    import torch
    from adm_unet import build_unet, randomize_, save_safetensors
    os.makedirs(args.work, exist_ok=True)
    st = os.path.join(args.work, f"{args.preset}_random.safetensors")
    pt = os.path.join(args.work, f"{args.preset}_random.pt")
    x = os.path.join(args.work, f"{args.preset}_input.npy")
    if not (os.path.exists(st) and os.path.exists(pt)):
        print(f"making random weights for {args.preset} ...", flush=True)
        model = randomize_(build_unet(cfg), 0)
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_safetensors(st, sd, {"config": json.dumps(cfg), "format": "diffprobe-unet"})
        torch.save(sd, pt + ".tmp")
        os.replace(pt + ".tmp", pt)
        del model, sd
    if not os.path.exists(x):
        n = max(args.batch)
        rng = np.random.default_rng(0)
        np.save(x, rng.standard_normal((n, cfg["in_channels"], cfg["image_size"], cfg["image_size"]),
                                       dtype=np.float32))
    return st, pt, x


def torch_worker(a):
    """One PyTorch configuration (runs in its own process): JSON on stdout."""
    import numpy as np
    import torch
    from adm_unet import build_unet
    torch.set_num_threads(a.threads)
    t0 = time.time()
    cfg = json.loads(a.config)
    model = build_unet(cfg)
    model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    model.eval()
    load_s = time.time() - t0
    x = torch.from_numpy(np.load(a.input)[: a.batch].copy())
    if x.shape[0] < a.batch:
        x = x.repeat((a.batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[: a.batch]
    t = torch.full((a.batch,), float(a.t))
    y = torch.arange(a.batch) % cfg.get("num_classes", 1000) if cfg.get("class_cond") else None
    block = a.block
    stamps = []
    mods = list(model.input_blocks) + [model.middle_block] + list(model.output_blocks)
    hooks = []
    if a.per_block:
        for i, m in enumerate(mods):
            hooks.append(m.register_forward_hook(lambda *_, i=i: stamps.append((i + 1, time.perf_counter()))))
        hooks.append(model.out.register_forward_hook(lambda *_: stamps.append((0, time.perf_counter()))))
    times, per_block, first_s = [], {}, None
    with torch.no_grad():
        for r in range(a.repeats + 1):  # the first run is the warm-up
            stamps.clear()
            s = time.perf_counter()
            out = model.forward_blocks(x, t, y, blocks=[block])
            e = time.perf_counter()
            if r == 0:
                first_s = e - s
                if a.dump:
                    np.save(a.dump, out[block].numpy())
                continue
            times.append(e - s)
            last = s
            for b, ts in stamps:
                per_block.setdefault(b, []).append(ts - last)
                last = ts
    print(json.dumps({"times": times, "load_s": load_s, "first_s": first_s,
                      "per_block_ms": {str(b): 1e3 * statistics.median(v) for b, v in per_block.items()},
                      "torch": torch.__version__, "blas": torch.__config__.show()}))


def export_worker(a):
    """torch.onnx.export of the reference model up to a.block at batch a.batch (own process)."""
    import torch
    from adm_unet import build_unet
    cfg = json.loads(a.config)
    model = build_unet(cfg)
    model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    model.eval()
    block = a.block

    class UpToBlock(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x, t, y=None):
            return self.m.forward_blocks(x, t, y, blocks=[block])[block]

    n, c, s = a.batch, cfg["in_channels"], cfg["image_size"]
    x = torch.zeros(n, c, s, s)
    # The tracer records timestep-derived values as constants (adm_unet's torch.as_tensor), so
    # the graph is exported at the timestep it is timed at (the file name carries it).
    t = torch.full((n,), float(a.t))
    names = ["x", "t"]
    inputs = (x, t)
    if cfg.get("class_cond"):
        inputs = (x, t, torch.zeros(n, dtype=torch.int64))
        names.append("y")
    with torch.no_grad():
        torch.onnx.export(UpToBlock(model), inputs, a.out + ".tmp", input_names=names, output_names=["out"],
                          opset_version=17, do_constant_folding=True)
    os.replace(a.out + ".tmp", a.out)


def onnx_model(args, cfg, pt, block, batch):
    """The exported model for (block, batch), made once into --work."""
    path = os.path.join(args.work, f"{args.preset}_b{block}_n{batch}_t{args.t:g}.onnx")
    if not os.path.exists(path):
        print(f"exporting {os.path.basename(path)} ...", flush=True)
        subprocess.run(["/usr/bin/python3", os.path.abspath(__file__), "_export", "--config", json.dumps(cfg),
                        "--weights", pt, "--block", str(block), "--batch", str(batch), "--t", str(args.t), "--out", path],
                       check=True)
    return path


def run_ort(args, cfg, pt, x, block, batch, dump):
    model = onnx_model(args, cfg, pt, block, batch)
    cmd = ["node", os.path.join(ROOT, "benchmarks", "onnx", "run_ort.js"), "--model", model, "--input", x,
           "--batch", str(batch), "--t", str(args.t), "--threads", str(args.threads), "--repeats",
           str(args.repeats), "--dump", dump]
    if cfg.get("class_cond"):
        cmd += ["--labels", str(cfg.get("num_classes") or 1000)]
    out, rss = measured(cmd)
    return json.loads(out.strip().splitlines()[-1]), rss


def run_torch(args, cfg, pt, x, block, batch, dump):
    cmd = ["/usr/bin/python3", os.path.abspath(__file__), "_torch", "--config", json.dumps(cfg), "--weights", pt,
           "--input", x, "--block", str(block), "--batch", str(batch), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--t", str(args.t), "--dump", dump]
    if args.per_block:
        cmd.append("--per-block")
    out, rss = measured(cmd)
    r = json.loads(out.strip().splitlines()[-1])
    return r, rss


def run_ours(args, st, x, block, batch, precision, dump):
    # "int8" is int8 with per-image scales, "int8-cal" with scales calibrated by one bf16 forward of
    # the benchmark's own input (bench_unet --int8=calibrated).
    mode = ["--precision=int8", "--int8=calibrated"] if precision == "int8-cal" else [f"--precision={precision}"]
    cmd = [args.bench, f"--weights={st}", f"--preset={args.preset}", f"--input={x}", f"--t={args.t}",
           f"--blocks={block}", f"--batch={batch}", f"--threads={args.threads}", *mode,
           f"--dump={dump}", f"--benchmark_repetitions={args.repeats}", "--benchmark_min_time=0.01",
           "--benchmark_format=json", "--benchmark_report_aggregates_only=false"]
    if args.per_block:
        cmd.append("--per-block")
    out, rss = measured(cmd)
    bench = json.loads(out)["benchmarks"]
    runs = [b for b in bench if b.get("run_type") == "iteration"]
    times = [b["real_time"] / 1e3 for b in runs]  # ms -> s (Unit ms)
    per_block = {}
    for b in runs:
        for k, v in b.items():
            if k.startswith("b") and k.endswith("_ms"):
                per_block.setdefault(str(int(k[1:-3])), []).append(v)
    return {"times": times, "per_block_ms": {k: statistics.median(v) for k, v in per_block.items()},
            "arena_mib": runs[0].get("arena_MiB"), "live_mib": runs[0].get("peak_live_MiB"),
            "gflop": runs[0]["GFLOP"],
            # the very first forward of the process (primitives created, memory plan recorded)
            "first_s": runs[0].get("first_pass_ms", float("nan")) / 1e3,
            # the FMA limit measured just before and after each timed pass, and the pass's fraction of it
            "adjacent_peaks": [b.get("peak_GFLOP/s") for b in runs],
            "of_adjacent_peak": [b.get("of_peak") for b in runs]}, rss


def rel_err(a, b):
    import numpy as np
    a, b = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def pooled_cosine(a, b, p=2):
    """Cosine similarity of the avg-pooled (p x p) features, worst sample."""
    import numpy as np
    a, b = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    n, c, h, w = a.shape
    pa = a.reshape(n, c, p, h // p, p, w // p).mean(axis=(3, 5)).reshape(n, -1)
    pb = b.reshape(n, c, p, h // p, p, w // p).mean(axis=(3, 5)).reshape(n, -1)
    cos = (pa * pb).sum(1) / (np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1))
    return float(cos.min())


def peak_gflops(args):
    """The machine's limits on --threads threads (benchmarks/bench_peak), GFLOP/s by precision:
    "fp32" (FMA) always, "bf16" (vdpbf16ps) and "int8" (vpdpbusd, OP/s) where the CPU has them."""
    out, _ = measured([args.peak, f"--threads={args.threads}", "--benchmark_format=json",
                       "--benchmark_repetitions=5"])
    runs = [b for b in json.loads(out)["benchmarks"] if b.get("run_type") == "iteration" and not b.get("error_occurred")]
    # The median (the JSON holds the counter in FLOP/s): on the shared VMs a single repetition
    # has been seen reporting 1.8x the physical limit (a clock glitch), so never the max.
    peaks = {}
    for kind, prefix in (("fp32", "fma_peak/"), ("bf16", "bf16_dot_peak/"), ("int8", "int8_dot_peak/")):
        rates = [b["GFLOP/s"] for b in runs if b["name"].startswith(prefix)]
        if rates:
            peaks[kind] = statistics.median(rates) / 1e9
    return peaks


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_torch":
        p = argparse.ArgumentParser()
        p.add_argument("_torch")
        for k in ("--config", "--weights", "--input", "--dump"):
            p.add_argument(k, default="")
        for k in ("--block", "--batch", "--threads", "--repeats"):
            p.add_argument(k, type=int)
        p.add_argument("--t", type=float, default=90)
        p.add_argument("--per-block", action="store_true")
        torch_worker(p.parse_args())
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_export":
        p = argparse.ArgumentParser()
        p.add_argument("_export")
        for k in ("--config", "--weights", "--out"):
            p.add_argument(k, default="")
        for k in ("--block", "--batch"):
            p.add_argument(k, type=int)
        p.add_argument("--t", type=float, default=90)
        export_worker(p.parse_args())
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    build = os.path.join(ROOT, "build", "release")
    p.add_argument("--preset", default="256x256_diffusion_uncond")
    p.add_argument("--blocks", default="24,out")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--pairs", default=None,
                   help="explicit block:batch pairs instead of blocks x batch, e.g. 24:1,out:1,24:8")
    p.add_argument("--precision", default="fp32,bf16",
                   help="fp32, bf16, int8 (per-image scales), int8-cal (calibrated on the input), comma-separated")
    p.add_argument("--baselines", default="torch",
                   help="torch, or torch,ort to add ONNX Runtime (benchmarks/onnx, see above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--t", type=float, default=90)
    p.add_argument("--per-block", action="store_true", help="also time every block inside the forward")
    p.add_argument("--bench", default=os.path.join(build, "benchmarks", "bench_unet"))
    p.add_argument("--peak", default=os.path.join(build, "benchmarks", "bench_peak"))
    p.add_argument("--cli", default=os.path.join(build, "bin", "diffprobe"))
    p.add_argument("--work", default=os.path.join(ROOT, "build", "bench"))
    p.add_argument("--out", default=None, help="JSON results (default WORK/compare_PRESET.json)")
    p.add_argument("--plot", default=None, help="per-block time plot (PNG), needs --per-block")
    args = p.parse_args()
    blk = lambda b: 0 if b == "out" else int(b)  # noqa: E731
    if args.pairs:
        pairs = [(blk(x.split(":")[0]), int(x.split(":")[1])) for x in args.pairs.split(",")]
    else:
        pairs = [(blk(b), int(n)) for n in args.batch.split(",") for b in args.blocks.split(",")]
    args.batch = sorted({n for _, n in pairs})
    precisions = args.precision.split(",")
    args.out = args.out or os.path.join(args.work, f"compare_{args.preset}.json")

    cfg = preset_config(args.cli, args.preset)
    st, pt, x = make_files(args, cfg)
    cpu = cpu_info()
    print(f"CPU: {cpu['model_name']} (family {cpu['family']}, model {cpu['model']}"
          f"{', ' + cpu['generation'] if cpu.get('generation') else ''}); ISA {' '.join(cpu['isa'])}", flush=True)
    peaks = peak_gflops(args)
    peak = peaks["fp32"]
    print(f"measured limits, {args.threads} threads: " +
          ", ".join(f"{k} {v:.1f} G{'OP' if k == 'int8' else 'FLOP'}/s" for k, v in peaks.items()), flush=True)
    baselines = args.baselines.split(",")
    # Loading alone: peak RSS of `diffprobe info --weights` (maps the file, builds the model).
    _, load_rss_st = measured([args.cli, "info", "--weights", st, "--preset", args.preset])
    _, load_rss_pt = measured([args.cli, "info", "--weights", pt, "--preset", args.preset])
    model_mib = os.path.getsize(st) / 2 ** 20
    results = {"cpu": cpu, "preset": args.preset, "threads": args.threads, "repeats": args.repeats, "t": args.t,
               "fma_peak_gflops": peak, "peaks_gflops": peaks, "model_mib": model_mib,
               "baselines": baselines,
               "load_rss_mib": {"safetensors": load_rss_st, "torch_zip": load_rss_pt}, "rows": []}
    print(f"model {model_mib:.0f} MiB; diffprobe load peak RSS: safetensors {load_rss_st:.0f} MiB "
          f"({load_rss_st / model_mib:.2f}x), torch zip {load_rss_pt:.0f} MiB ({load_rss_pt / model_mib:.2f}x)")
    hdr = f"{'block':>5} {'batch':>5} {'prec':>5} {'ours s':>8} {'torch s':>8} {'speedup':>7} {'GFLOP/s':>8} " \
          f"{'of peak':>7} {'of adj.':>7} {'RSS ours':>9} {'RSS torch':>9} {'RSS ratio':>9} {'1st ours':>8} " \
          f"{'1st torch':>9}" + (f" {'ORT s':>8} {'vs ORT':>7} {'RSS ORT':>8}" if "ort" in baselines else "") + \
          "  check"
    print(hdr, flush=True)
    for block, batch in pairs:
        td = os.path.join(args.work, f"torch_b{block}_n{batch}.npy")
        tr, trss = run_torch(args, cfg, pt, x, block, batch, td)
        tmed = statistics.median(tr["times"])
        ort = None
        if "ort" in baselines:
            odump = os.path.join(args.work, f"ort_b{block}_n{batch}.npy")
            orr_, orss_ = run_ort(args, cfg, pt, x, block, batch, odump)
            ort = {"s": statistics.median(orr_["times"]), "times": orr_["times"], "rss_mib": orss_,
                   "first_s": orr_["first_s"], "load_s": orr_["load_s"], "version": orr_["ort"],
                   "rel_err_vs_torch": rel_err(odump, td)}
        fp32_dump = None
        for prec in precisions:
            od = os.path.join(args.work, f"ours_{prec}_b{block}_n{batch}.npy")
            orr, orss = run_ours(args, st, x, block, batch, prec, od)
            omed = statistics.median(orr["times"])
            work = orr["gflop"]  # the model's 2*MAC count for this batch, from unet_block_infos
            err = rel_err(od, td)
            check = f"rel.err {err:.1e}"
            cos = None
            if prec == "fp32":
                fp32_dump = od
            elif fp32_dump:
                try:
                    cos = pooled_cosine(od, fp32_dump)
                    check += f", pooled cos vs fp32 {cos:.5f}"
                except ValueError:
                    pass
            kind = prec.split("-")[0]
            prec_peak = peaks.get(kind, peak)  # the limit of the precision that ran
            row = {"block": block, "batch": batch, "precision": prec, "ours_s": omed, "torch_s": tmed,
                   "speedup": tmed / omed, "gflop": work, "ours_gflops": work / omed,
                   "torch_gflops": work / tmed, "fraction_of_peak": work / omed / prec_peak,
                   "peak_kind": kind if kind in peaks else "fp32",
                   "fraction_of_adjacent_peak": statistics.median(orr["of_adjacent_peak"]),
                   "adjacent_peaks": orr["adjacent_peaks"],
                   "ours_rss_mib": orss, "torch_rss_mib": trss, "rss_ratio": orss / trss,
                   "rel_err_vs_torch": err, "pooled_cosine_vs_fp32": cos, "ours_times": orr["times"],
                   "torch_times": tr["times"], "ours_arena_mib": orr["arena_mib"],
                   "ours_live_mib": orr["live_mib"],
                   "ours_per_block_ms": orr["per_block_ms"], "torch_per_block_ms": tr["per_block_ms"],
                   "ours_first_s": orr["first_s"], "torch_first_s": tr.get("first_s")}
            if ort:
                row.update({"ort_s": ort["s"], "speedup_vs_ort": ort["s"] / omed, "ort_times": ort["times"],
                            "ort_rss_mib": ort["rss_mib"], "ort_first_s": ort["first_s"],
                            "ort_load_s": ort["load_s"], "ort_version": ort["version"],
                            "ort_rel_err_vs_torch": ort["rel_err_vs_torch"]})
            results["rows"].append(row)
            print(f"{block if block else 'out':>5} {batch:>5} {prec:>5} {omed:8.3f} {tmed:8.3f} "
                  f"{tmed / omed:6.2f}x {work / omed:8.1f} {work / omed / prec_peak:6.1%} "
                  f"{row['fraction_of_adjacent_peak']:6.1%} {orss:8.0f}M "
                  f"{trss:8.0f}M {orss / trss:8.2f}x {orr['first_s']:8.3f} {tr.get('first_s') or float('nan'):9.3f}"
                  + (f" {ort['s']:8.3f} {ort['s'] / omed:6.2f}x {ort['rss_mib']:7.0f}M" if ort else "")
                  + f"  {check}" + (f"; ORT rel.err vs torch {ort['rel_err_vs_torch']:.1e}" if ort else ""),
                  flush=True)
    results["torch_blas"] = "OpenBLAS" if "openblas" in tr.get("blas", "").lower() else tr.get("blas", "")[:200]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    json.dump(results, open(args.out, "w"), indent=1)
    print(f"wrote {args.out}")
    if args.per_block and args.plot:
        plot_per_block(results, args.plot)


def plot_per_block(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in results["rows"] if r["ours_per_block_ms"] and r["batch"] == min(x["batch"] for x in results["rows"])]
    row = max(rows, key=lambda r: (r["block"] == 0, r["block"]))
    blocks = sorted((int(b) for b in row["torch_per_block_ms"]), key=lambda b: (b == 0, b))
    fig, ax = plt.subplots(figsize=(11, 4), constrained_layout=True)
    xs = range(len(blocks))
    w = 0.28
    ax.bar([i - w for i in xs], [row["torch_per_block_ms"][str(b)] for b in blocks], w, label="PyTorch fp32")
    for k, prec in enumerate(sorted({r["precision"] for r in rows})):
        rr = [r for r in rows if r["precision"] == prec and r["block"] == row["block"]][0]
        ax.bar([i + k * w for i in xs], [rr["ours_per_block_ms"].get(str(b), 0) for b in blocks], w,
               label=f"diffprobe {prec}")
    ax.set_xticks(list(xs), [("out" if b == 0 else str(b)) for b in blocks], fontsize=7)
    ax.set_xlabel("block")
    ax.set_ylabel(f"ms per block (batch {row['batch']})")
    ax.set_title(f"{results['preset']}: time per block inside the forward, {results['threads']} threads "
                 f"(median of {results['repeats']})", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
