"""Merge RELION 3.1 particle STARs written by `cryoforge simulate` (same optics) into one,
interleaving their rows; image paths are rewritten relative to the output's folder.
Usage: python3 bench/merge_star.py OUT.star IN1.star IN2.star ..."""
import os
import sys

out, ins = sys.argv[1], sys.argv[2:]
tables, header = [], None
for p in ins:
    lines = open(p).read().split("\n")
    last = max(i for i, l in enumerate(lines) if l.startswith("_rln"))
    if header is None:
        header = lines[: last + 1]
    rel = os.path.relpath(os.path.dirname(os.path.abspath(p)), os.path.dirname(os.path.abspath(out)))
    rows = []
    for l in lines[last + 1 :]:
        if not l.strip():
            continue
        name, rest = l.split(None, 1)
        idx, stack = name.split("@")
        rows.append(f"{idx}@{rel}/{stack} {rest}")
    tables.append(rows)
merged = [r for group in zip(*tables) for r in group]
open(out, "w").write("\n".join(header + merged) + "\n")
