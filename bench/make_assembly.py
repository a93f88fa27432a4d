"""An asymmetric assembly for refinement benchmarks: COPIES copies of a model (all atoms),
each turned by its own random rotation and placed at irregular positions around the
origin, one chain per copy. With AdK (≈ 45 Å) and the defaults, 8 copies span ≈ 160 Å: bigger
than AdK alone, with no symmetry, so that pose errors need no symmetry-mate bookkeeping.

    python3 bench/make_assembly.py data/demo/adk_closed.pdb 8 assembly.pdb [SEED]
"""
import math
import random
import sys

src, copies, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 7
rng = random.Random(seed)
atoms = []
for line in open(src):
    if line.startswith("ENDMDL"):
        break
    if line.startswith(("ATOM", "HETATM")) and line[16] in " A":
        atoms.append((line, float(line[30:38]), float(line[38:46]), float(line[46:54])))
ca = [a for a in atoms if a[0][12:16].strip() == "CA"]
c = [sum(a[k] for a in ca) / len(ca) for k in (1, 2, 3)]


def rotation():
    # Uniform random rotation from a random unit quaternion.
    u1, u2, u3 = rng.random(), rng.random(), rng.random()
    q = (math.sqrt(1 - u1) * math.sin(2 * math.pi * u2), math.sqrt(1 - u1) * math.cos(2 * math.pi * u2),
         math.sqrt(u1) * math.sin(2 * math.pi * u3), math.sqrt(u1) * math.cos(2 * math.pi * u3))
    w, x, y, z = q
    return [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]


# Irregular centres: a jittered spiral on a sphere of radius 60 Å (8 copies ≈ 165 Å extent).
centres = []
for i in range(copies):
    zc = 1 - 2 * (i + 0.5) / copies
    phi = i * math.pi * (3 - math.sqrt(5)) + rng.uniform(-0.3, 0.3)
    r = 60.0 * rng.uniform(0.85, 1.1)
    s = math.sqrt(max(0.0, 1 - zc * zc))
    centres.append((r * s * math.cos(phi), r * s * math.sin(phi), r * zc))
ids = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
serial = 1
with open(out, "w") as f:
    for k in range(copies):
        rot = rotation()
        for line, x, y, z in atoms:
            p = (x - c[0], y - c[1], z - c[2])
            q = [sum(rot[i][j] * p[j] for j in range(3)) + centres[k][i] for i in range(3)]
            f.write(line[:6] + f"{serial % 100000:5d}" + line[11:21] + ids[k] + line[22:30]
                    + f"{q[0]:8.3f}{q[1]:8.3f}{q[2]:8.3f}" + line[54:].rstrip("\n") + "\n")
            serial += 1
        f.write("TER\n")
    f.write("END\n")
ext = 0.0
print(f"{copies} copies x {len(atoms)} atoms -> {out}")
