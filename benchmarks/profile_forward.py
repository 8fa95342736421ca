#!/usr/bin/env python3
"""Where the threads' time goes inside bench_unet's timed passes (Linux perf, no HW counters).

  /usr/bin/python3 benchmarks/profile_forward.py -- build/release/benchmarks/bench_unet \\
      --preset=256x256_diffusion_uncond --blocks=24 --batch=1 --benchmark_repetitions=3 --per-block

Samples every thread at 999 Hz (perf record -e cpu-clock), then keeps only the samples of the
timed passes: bench_unet measures the FMA limit (benchmarks/fma_peak.hpp) right before and right
after them, so the stretches free of fma_loop samples alternate between timed passes and the next
repetition's setup (sanity bounds on a pass: --min/--max seconds). The setup, the first (recording) pass and the peak loops are left out: the
recording pass writes every activation into fresh memory, and on a VM its page faults would
dominate a whole-run profile.

Prints, over the timed passes:
  - the share of sampled thread time per category: oneDNN's JIT kernels, libgomp (a thread waiting
    at a barrier), each of diffprobe's own kernels, the kernel;
  - what the other thread was doing while one waited in libgomp (in a JIT kernel: oneDNN's work
    split or a descheduled partner; in one of our ops: our own imbalance);
  - thread time that has no samples at all (gaps > 1.5 ms between a thread's samples: the vCPU was
    not running, or the thread slept), per thread;
  - with --per-block counters in bench_unet's output (b01_ms ...), the libgomp share per block.
perf must be installed and allowed (perf_event_paranoid <= 1, or root).
"""
import argparse
import bisect
import collections
import itertools
import os
import re
import subprocess
import sys
import tempfile

SAMPLE_HZ = 999


def category(rest):
    if "libgomp" in rest:
        return "libgomp (barrier wait)"
    if "[JIT]" in rest or rest.startswith("[unknown]"):
        return "oneDNN JIT kernels"
    if "kallsyms" in rest or "[kernel" in rest:
        return "kernel"
    sym = re.sub(r"\s*\((/|\[).*\)\s*$", "", rest).strip()
    return sym[:100] or "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="perf.data path (default: a temporary file)")
    ap.add_argument("--min", type=float, default=0.3, help="shortest timed pass, s")
    ap.add_argument("--max", type=float, default=60.0, help="longest timed pass, s")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- bench_unet and its flags")
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("give the bench_unet command after --")
    data = a.data or os.path.join(tempfile.mkdtemp(prefix="dp_profile_"), "perf.data")
    rec = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", str(SAMPLE_HZ), "-o", data, "--"] + cmd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if rec.returncode != 0:
        sys.stderr.write(rec.stderr[-3000:])
        raise SystemExit("perf record failed")
    bench_out = rec.stdout
    script = subprocess.run(["perf", "script", "-i", data, "-F", "tid,time,ip,sym,dso"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, check=True).stdout
    rows = []
    for line in script.splitlines():
        m = re.match(r"\s*(\d+)\s+([\d.]+):\s+[0-9a-f]+\s+(.*)$", line)
        if m:
            rows.append((float(m.group(2)), int(m.group(1)), m.group(3).strip()))
    rows.sort()
    # Timed passes: the stretches between two FMA-peak bursts.
    stretches, cur = [], None
    for i, (t, _, rest) in enumerate(rows):
        if "fma_loop" in rest:
            if cur:
                stretches.append(cur)
            cur = None
        else:
            cur = [i, i] if cur is None else [cur[0], i]
    # Each repetition of bench_unet: prepare + first pass, peak, timed passes, peak. The stretch
    # from the program's start holds the setup; after it, timed and setup stretches alternate.
    # (A stray sample inside a peak burst would split it: such slivers are dropped.)
    stretches = [s for s in stretches if s[1] - s[0] >= 50]
    if stretches and stretches[0][0] == 0:
        stretches = stretches[1:]
    passes = [s for s in stretches[0::2] if a.min < rows[s[1]][0] - rows[s[0]][0] < a.max]
    if not passes:
        raise SystemExit("no timed pass found (is this bench_unet, with its peak measurements?)")
    prof, waiting_partner = collections.Counter(), collections.Counter()
    gaps_ms = collections.Counter()
    wall = 0.0
    for s in passes:
        seg = rows[s[0]:s[1] + 1]
        wall += seg[-1][0] - seg[0][0]
        by_tid = collections.defaultdict(list)
        for t, tid, rest in seg:
            c = category(rest)
            prof[c] += 1
            by_tid[tid].append((t, c))
        tids = sorted(by_tid)
        for k, tid in enumerate(tids):
            lst = by_tid[tid]
            for (t0, _), (t1, _) in zip(lst, lst[1:]):
                if t1 - t0 > 0.0015:
                    gaps_ms[k] += 1e3 * (t1 - t0 - 1.0 / SAMPLE_HZ)
            for other in tids:
                if other == tid:
                    continue
                times = [x[0] for x in by_tid[other]]
                for t, c in lst:
                    if not c.startswith("libgomp"):
                        continue
                    j = bisect.bisect_left(times, t)
                    near = min((q for q in (j - 1, j) if 0 <= q < len(times)), key=lambda q: abs(times[q] - t))
                    waiting_partner[by_tid[other][near][1]] += 1
    n = sum(prof.values())
    print(f"{len(passes)} timed passes, {wall:.2f} s of wall time, {n} samples "
          f"({n / SAMPLE_HZ:.2f} thread-s of {len(set(r[1] for r in rows))} threads' samples)")
    print("\nshare of sampled thread time:")
    for c, v in prof.most_common(a.top):
        print(f"  {100.0 * v / n:5.1f} %  {c}")
    w = sum(waiting_partner.values())
    if w:
        print("\nwhile a thread waited in libgomp, the other one was in:")
        for c, v in waiting_partner.most_common(8):
            print(f"  {100.0 * v / w:5.1f} %  {c}")
    print("\nunsampled thread time (gaps > 1.5 ms: vCPU not running or thread asleep), per pass:")
    for k in sorted(gaps_ms):
        print(f"  thread {k}: {gaps_ms[k] / len(passes):.1f} ms per pass "
              f"({100.0 * gaps_ms[k] / 1e3 / wall:.1f} % of the wall time)")
    # Per block, from bench_unet's --per-block counters (mean over repetitions).
    per = {}
    for line in bench_out.splitlines():
        if "_mean" in line or "_median" in line or "_stddev" in line or "_cv" in line:
            continue
        for b, v, kilo in re.findall(r"b(\d\d)_ms=([\d.]+)(k?)", line):
            per.setdefault(int(b), []).append(float(v) * (1e3 if kilo else 1.0))
    if per:
        blocks = sorted(per)
        means = [sum(per[b]) / len(per[b]) for b in blocks]
        bounds = list(itertools.accumulate(means))
        wait, tot = collections.Counter(), collections.Counter()
        for s in passes:
            seg = rows[s[0]:s[1] + 1]
            t0, span = seg[0][0], seg[-1][0] - seg[0][0]
            scale = bounds[-1] / (1e3 * span) if span > 0 else 1.0
            for t, _, rest in seg:
                k = min(bisect.bisect_left(bounds, (t - t0) * 1e3 * scale), len(blocks) - 1)
                tot[blocks[k]] += 1
                if category(rest).startswith("libgomp"):
                    wait[blocks[k]] += 1
        print("\nper block (times scaled onto each pass): ms, libgomp share")
        for b, ms in zip(blocks, means):
            share = 100.0 * wait[b] / tot[b] if tot[b] else 0.0
            print(f"  block {b:2d}: {ms:8.1f} ms  {share:5.1f} %")


if __name__ == "__main__":
    main()
