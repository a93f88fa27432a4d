"""A large synthetic complex for throughput benchmarks: COPIES copies of a model's Cα atoms
(one chain each, on a cubic grid 48 Å apart, centred at the origin).

    python3 bench/make_complex.py data/demo/adk_closed.pdb 47 complex.pdb   # 47 × 214 = 10,058 residues
"""
import math
import sys

src, copies, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ca = []
for line in open(src):
    if line.startswith("ENDMDL"):
        break
    if line.startswith("ATOM") and line[12:16].strip() == "CA" and line[16] in " A":
        ca.append((line[17:20], int(line[22:26]), float(line[30:38]), float(line[38:46]), float(line[46:54])))
cx = [sum(a[k] for a in ca) / len(ca) for k in (2, 3, 4)]
ids = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
if copies > len(ids):
    sys.exit(f"at most {len(ids)} copies (one chain ID each)")
side = math.ceil(copies ** (1 / 3))
serial = 1
with open(out, "w") as f:
    for c in range(copies):
        g = (c % side, (c // side) % side, c // (side * side))
        off = [48.0 * (g[k] - (side - 1) / 2) for k in range(3)]
        for name, seq, x, y, z in ca:
            p = [x - cx[0] + off[0], y - cx[1] + off[1], z - cx[2] + off[2]]
            f.write(f"ATOM  {serial % 100000:5d}  CA  {name} {ids[c]}{seq:4d}    {p[0]:8.3f}{p[1]:8.3f}{p[2]:8.3f}  1.00 20.00           C\n")
            serial += 1
        f.write("TER\n")
    f.write("END\n")
print(f"{copies} chains × {len(ca)} residues = {copies * len(ca)} residues, grid {side}³ at 48 Å -> {out}")
