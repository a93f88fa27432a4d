"""Pose and map accuracy of a refinement against the truth of a `cryoforge simulate` set.

    python3 bench/refine_score.py REFINED.star TRUTH.star [--sym C1]

Matches particles by rlnImageName, converts RELION Euler angles with RELION's
Euler_angles2matrix (CONVENTIONS.md rule 2) and shifts from rlnOriginX/YAngst (or px
columns with --apix), and prints JSON: median / 90th-percentile geodesic angular error
(degrees), the fraction of particles more than 30° off, median shift error (px), count.
Only the standard library (no NumPy), so that it runs anywhere the benchmark does.
Symmetry: C1 only (the benchmark assembly is asymmetric).
"""
import json
import math
import sys


def star_particles(path):
    """Rows of the particle table (the loop that has rlnImageName) as dicts of strings."""
    blocks, cur, labels, rows, in_loop = {}, None, [], [], False
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("data_"):
                if cur is not None:
                    blocks[cur] = (labels, rows)
                cur, labels, rows, in_loop = line[5:], [], [], False
            elif line.startswith("loop_"):
                in_loop = True
            elif line.startswith("_"):
                labels.append(line.split()[0][1:])
            elif line and not line.startswith("#") and in_loop:
                rows.append(line.split())
    if cur is not None:
        blocks[cur] = (labels, rows)
    for labels, rows in blocks.values():
        if "rlnImageName" in labels:
            return [dict(zip(labels, r)) for r in rows]
    sys.exit(f"{path}: no particle table with rlnImageName")


def apix_of(path):
    labels, rows, in_optics = [], [], False
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if line.startswith("data_"):
                in_optics = line == "data_optics"
                labels = []
            elif in_optics and line.startswith("_"):
                labels.append(line.split()[0][1:])
            elif in_optics and line and not line.startswith(("#", "loop_")):
                row = dict(zip(labels, line.split()))
                if "rlnImagePixelSize" in row:
                    return float(row["rlnImagePixelSize"])
    return None


def matrix(rot, tilt, psi):
    a, b, g = (math.radians(v) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(g), math.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return [[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb]]


def angle(a, b):
    t = sum(a[i][j] * b[i][j] for i in range(3) for j in range(3))
    return math.degrees(math.acos(max(-1.0, min(1.0, (t - 1) / 2))))


def shift_px(r, apix):
    if "rlnOriginXAngst" in r:
        return float(r["rlnOriginXAngst"]) / apix, float(r["rlnOriginYAngst"]) / apix
    return float(r.get("rlnOriginX", 0)), float(r.get("rlnOriginY", 0))


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]


def main():
    ref, truth = sys.argv[1], sys.argv[2]
    apix = apix_of(truth) or apix_of(ref)
    t = {r["rlnImageName"]: r for r in star_particles(truth)}
    angs, shifts = [], []
    for r in star_particles(ref):
        g = t.get(r["rlnImageName"])
        if g is None:
            continue
        m = matrix(*(float(r[k]) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
        n = matrix(*(float(g[k]) for k in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
        angs.append(angle(m, n))
        a, b = shift_px(r, apix), shift_px(g, apix)
        shifts.append(math.hypot(a[0] - b[0], a[1] - b[1]))
    if not angs:
        sys.exit("no particle names in common")
    print(json.dumps({
        "particles": len(angs),
        "median_angle_deg": round(pct(angs, 0.5), 3),
        "p90_angle_deg": round(pct(angs, 0.9), 3),
        "fraction_over_30deg": round(sum(a > 30 for a in angs) / len(angs), 4),
        "median_shift_px": round(pct(shifts, 0.5), 3),
    }))


main()
