#!/usr/bin/env python3
"""Instructions per multiply-accumulate of the depthwise steps of a firmware run.

Reads the model file (`.nnq.json`: the geometry of every convolution) and the output of
`nnquant verify --count-instructions` (its per-step table), prints for every step whose
convolution is depthwise (groups == in_c == out_c) its instructions, MACs
(out_h * out_w * c * kernel_h * kernel_w, the whole window counted, padding included) and
instructions per MAC, then the figure over all those steps. With --max, exits with status 1
when that overall figure or any single step is above it (the CI gate).

    python3 tools/dw_instr_per_mac.py model.nnq.json verify.txt --max 5.0
"""

import argparse
import json
import re
import sys


def depthwise_macs(model):
    """Conv layer name -> MACs, for the depthwise convolutions of the model."""
    out = {}
    for layer in model["graph"]["layers"]:
        op = layer["op"]
        if not isinstance(op, dict) or "Conv" not in op:
            continue
        c = op["Conv"]
        ch = c["in_dims"]["c"]
        if c["groups"] == ch and c["out_dims"]["c"] == ch:
            o, k = c["out_dims"], c["kernel"]
            out[layer["name"]] = o["h"] * o["w"] * ch * k["h"] * k["w"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("verify_output")
    ap.add_argument("--max", type=float, default=None, help="fail above this many instructions per MAC")
    args = ap.parse_args(argv)
    with open(args.model) as f:
        macs = depthwise_macs(json.load(f))
    rows = []
    with open(args.verify_output) as f:
        for line in f:
            m = re.match(r"^\|\s*([^|]+?)\s*\|\s*(\d+)\s*\|", line)
            if m and m.group(1).split("+")[0] in macs:
                rows.append((m.group(1), int(m.group(2)), macs[m.group(1).split("+")[0]]))
    if not rows:
        print("no depthwise steps with instruction counts found", file=sys.stderr)
        return 1
    for name, instr, mac in rows:
        print(f"depthwise step {name}: {instr} instructions, {mac} MACs, {instr / mac:.2f} instructions/MAC")
    total_i, total_m = sum(r[1] for r in rows), sum(r[2] for r in rows)
    figure = total_i / total_m
    print(f"depthwise overall: {figure:.2f} instructions/MAC ({len(rows)} steps)")
    if args.max is None:
        return 0
    over = [(n, i / m) for n, i, m in rows if i / m > args.max]
    if figure > args.max or over:
        worst = ", ".join(f"{n} {v:.2f}" for n, v in over)
        print(f"depthwise {figure:.2f} instructions/MAC overall; above {args.max}: {worst or 'none'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
