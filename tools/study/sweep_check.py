#!/usr/bin/env python3
"""How well `diffprobe sweep`'s quick probe ranks the grid: its cells against the study's trained
linear probes (docs/results/results.json, the same features and test set).

  /usr/bin/python3 tools/study/sweep_check.py SWEEP_DIR [--model trained] [--json OUT]

Prints Spearman's rank correlation over the grid, the best cell of each, where the study's best
cell ranks under the quick probe, the refined best cell (when the sweep refined), and the sweep's
wall time split into features and probes."""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def ranks(v):
    """Ranks 1..n, ties given their mean rank."""
    v = np.asarray(v, dtype=float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        r[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return r


def spearman(a, b):
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir")
    ap.add_argument("--model", default="trained", choices=["trained", "untrained"])
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results", "results.json"))
    ap.add_argument("--json", help="write the comparison here")
    a = ap.parse_args()

    sweep = json.load(open(os.path.join(a.sweep_dir, "sweep.json")))
    study = json.load(open(a.results))[f"sweep_{a.model}"]
    ts, blocks = study["t"], study["blocks"]
    full = {(t, b): study["top1"][i][j] for i, t in enumerate(ts) for j, b in enumerate(blocks)}
    quick = {(c["t"], c["block"]): c["top1"] for c in sweep["cells"] if c["pool"] == study["pool"]}
    keys = [k for k in full if k in quick]
    if len(keys) < 2:
        sys.exit(f"the sweep and the study share {len(keys)} cells; run the sweep on the study's grid")
    rho = spearman([quick[k] for k in keys], [full[k] for k in keys])
    qbest = max(keys, key=lambda k: (quick[k], -keys.index(k)))
    fbest = max(keys, key=lambda k: (full[k], -keys.index(k)))
    order = sorted(keys, key=lambda k: -quick[k])
    rank_of_study_best = order.index(fbest) + 1
    refined = [c for c in sweep["cells"] if "refined" in c]
    out = {
        "cells": len(keys),
        "probe": sweep["probe"],
        "spearman": round(rho, 4),
        "quick_best": {"t": qbest[0], "block": qbest[1], "quick_top1": quick[qbest], "study_top1": full[qbest]},
        "study_best": {"t": fbest[0], "block": fbest[1], "study_top1": full[fbest], "quick_top1": quick[fbest],
                       "rank_under_quick_probe": rank_of_study_best},
        "sweep_best": sweep["best"],
        "refined_cells": len(refined),
        "seconds": sweep.get("seconds"),
        "train_samples": sweep["train_samples"],
        "test_samples": sweep["test_samples"],
    }
    print(f"{len(keys)} cells; probe: {sweep['probe']}")
    print(f"Spearman (quick vs the study's trained probes): {rho:.4f}")
    print(f"quick probe's best: t={qbest[0]} block={qbest[1]} ({100 * quick[qbest]:.2f} %, study {100 * full[qbest]:.2f} %)")
    print(f"study's best: t={fbest[0]} block={fbest[1]} ({100 * full[fbest]:.2f} %), ranked {rank_of_study_best} "
          f"of {len(keys)} by the quick probe ({100 * quick[fbest]:.2f} %)")
    b = sweep["best"]
    if refined:
        print(f"sweep's best after refining {len(refined)} cells: t={b['t']} block={b['block']} "
              f"(trained probe {100 * b['refined']['top1']:.2f} %)")
    s = sweep.get("seconds", {})
    if s:
        print(f"wall time {s['total']:.0f} s: features {s['extract']:.0f} s ({100 * s['extract'] / s['total']:.0f} %), "
              f"probes {s['probe']:.0f} s ({100 * s['probe'] / s['total']:.0f} %)")
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
