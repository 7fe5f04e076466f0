#!/usr/bin/env python3
"""ncu_summary.py - one decode step's kernels from `ncu --csv --metrics
gpu__time_duration.sum` (op_profile records one step, see tests/op_profile.c):
time per kernel family, launches, and the sum, to set against the step's
time as served.

usage: ncu --profile-from-start off --csv --metrics gpu__time_duration.sum \\
           op_profile --backend cuda ... | tools/ncu_summary.py
"""
import csv
import re
import sys

SCALE = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}


def family(name):
    """A kernel's name without its arguments and template values."""
    name = re.sub(r"\(.*", "", name).strip()
    name = re.sub(r"<.*", "", name)
    return name.split()[-1] if name else "?"


def main():
    lines = sys.stdin.readlines()
    rows = [line for line in lines if line.startswith('"')]
    for line in lines:  # the program's own output (op_profile's step times)
        if not line.startswith('"') and not line.startswith("=="):
            sys.stdout.write(line)
    if not rows:
        sys.exit("ncu_summary: no CSV rows on stdin")
    total, launches, fams = 0.0, 0, {}
    for r in csv.DictReader(rows):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        us = float(r["Metric Value"].replace(",", "")) * SCALE.get(r["Metric Unit"], 1.0)
        f = fams.setdefault(family(r["Kernel Name"]), [0, 0.0])
        f[0] += 1
        f[1] += us
        total += us
        launches += 1
    if not launches:
        sys.exit("ncu_summary: no gpu__time_duration.sum values")
    print("%-36s %8s %10s %6s" % ("kernel", "launches", "us", "share"))
    for name, (n, us) in sorted(fams.items(), key=lambda kv: -kv[1][1]):
        print("%-36s %8d %10.1f %5.1f%%" % (name, n, us, 100 * us / total))
    print("one step: %d launches, %.1f us of kernel time" % (launches, total))


if __name__ == "__main__":
    main()
