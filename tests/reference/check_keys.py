#!/usr/bin/env python3
"""Check that adm_unet.build_unet registers exactly the official state-dict keys, in order,
with the official shapes, for every published checkpoint listed in
/work/shared/reference/state_dicts/*.tsv (or the directory given as argv[1]).
Models are built on the meta device, so nothing is allocated."""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adm_unet import build_unet, num_blocks  # noqa: E402


def read_tsv(path):
    flags, keys, counts = None, [], {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("#"):
                m = re.search(r"flags: (\{.*?\})", line)
                if m:
                    flags = json.loads(m.group(1))
                for k, v in re.findall(r"(\w+): (\d+)", line):
                    counts[k] = int(v)
                continue
            if not line:
                continue
            name, shape = line.split("\t")
            keys.append((name, tuple(int(s) for s in shape.split(",") if s)))
    return flags, keys, counts


def check(path):
    flags, want, counts = read_tsv(path)
    model = build_unet(flags, device="meta")
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    errors = []
    if got != want:
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                errors.append(f"first mismatch at #{i}: got {g}, want {w}")
                break
        if len(got) != len(want):
            errors.append(f"{len(got)} tensors, want {len(want)}")
    n_params = sum(v.numel() for v in model.state_dict().values())
    if "parameters" in counts and n_params != counts["parameters"]:
        errors.append(f"{n_params} parameters, want {counts['parameters']}")
    if "input_blocks" in counts and len(model.input_blocks) != counts["input_blocks"]:
        errors.append(f"{len(model.input_blocks)} input blocks, want {counts['input_blocks']}")
    if "output_blocks" in counts and len(model.output_blocks) != counts["output_blocks"]:
        errors.append(f"{len(model.output_blocks)} output blocks, want {counts['output_blocks']}")
    status = "OK  " if not errors else "FAIL"
    print(f"{status} {os.path.basename(path)}: {len(got)} tensors, {n_params} params, "
          f"{num_blocks(model)} blocks" + "".join("\n     " + e for e in errors))
    return not errors


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/reference/state_dicts"
    files = sorted(glob.glob(os.path.join(d, "*.tsv")))
    if not files:
        sys.exit(f"no .tsv files in {d}")
    ok = all([check(p) for p in files])
    print("all OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
