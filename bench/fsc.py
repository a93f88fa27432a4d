#!/usr/bin/env python3
"""FSC of maps against a truth map, shell by shell, with one piece of NumPy code for every map.

    python bench/fsc.py TRUTH.mrc NAME=MAP.mrc [NAME=MAP.mrc ...] [--json OUT.json]
    python bench/fsc.py TRUTH.mrc NAME=MAP.mrc --orientations      # diagnose flips/transposes
    python bench/fsc.py TRUTH.mrc NAME=MAP.mrc --mask-sphere       # soft spherical mask on all maps

Conventions (CONVENTIONS.md rules 7, 8, 13): volumes [z][y][x]; centred transform
F = fftshift(fftn(ifftshift(v))); shell k holds the Fourier voxels with round(|q|) = k,
k = 0..n/2 (corners beyond Nyquist excluded); FSC_k = Re Σ F1·F2* / sqrt(Σ|F1|² Σ|F2|²).
No mask unless --mask-sphere. The FSC is invariant to the maps' scale (and sign only flips it).
"""
import argparse
import itertools
import json
import sys

import numpy as np


def read_mrc(path):
    with open(path, "rb") as f:
        h = f.read(1024)
        nx, ny, nz, mode = np.frombuffer(h[:16], "<i4")
        mapc, mapr, maps = np.frombuffer(h[64:76], "<i4")
        nsym = int(np.frombuffer(h[92:96], "<i4")[0])
        cell = np.frombuffer(h[40:52], "<f4")
        f.seek(1024 + nsym)
        dt = {0: "i1", 1: "<i2", 2: "<f4", 6: "<u2", 12: "<f2"}[int(mode)]
        v = np.fromfile(f, dtype=dt, count=int(nx) * int(ny) * int(nz)).reshape(nz, ny, nx)
    if (mapc, mapr, maps) != (1, 2, 3):
        sys.exit(f"{path}: axis order {(mapc, mapr, maps)} is not (1, 2, 3); not handled")
    return v.astype(np.float64), float(cell[0]) / nx


def shells(n):
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return np.rint(r).astype(np.int64)


def ft(v):
    return np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))


def fsc(f1, f2, sh, n):
    m = sh <= n // 2
    k = sh[m]
    num = np.bincount(k, (f1[m] * np.conj(f2[m])).real, n // 2 + 1)
    d1 = np.bincount(k, (np.abs(f1[m]) ** 2), n // 2 + 1)
    d2 = np.bincount(k, (np.abs(f2[m]) ** 2), n // 2 + 1)
    return num / np.sqrt(np.maximum(d1 * d2, 1e-300))


def crossing(curve, n, apix, thr):
    """Resolution (Å) where the curve first falls below thr, interpolated linearly (rule 13)."""
    for k in range(1, len(curve)):
        if curve[k] < thr:
            a, b = curve[k - 1], curve[k]
            kk = k - 1 + (a - thr) / (a - b) if a != b else k
            return n * apix / kk if kk > 0 else float("inf")
    return 2 * apix


def cone_envelope(n):
    """Real-space envelope that the kernel w(q) = max(0, 1 − |q|) (q in Fourier voxels of the
    n-grid) imposes on a map made by normalised kernel insertion without gridding correction:
    E(x) = ∫ w(q) e^{2πi q·x/n} d³q / ∫ w, radially 4π∫ w(q) q² sinc(2q|x|/n) dq."""
    q = np.linspace(0, 1, 4001)
    w = (1 - q) * q * q
    c = np.arange(n) - n // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    xs = np.arange(int(r.max()) + 2)
    e = np.array([np.trapezoid(w * np.sinc(2 * q * x / n), q) for x in xs])
    return np.interp(r, xs, e / e[0])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("truth")
    p.add_argument("maps", nargs="+", help="NAME=MAP.mrc")
    p.add_argument("--json")
    p.add_argument("--mask-sphere", action="store_true",
                   help="multiply every map and the truth by a soft sphere (radius 0.45·n, raised-cosine "
                        "edge from 0.45·n − 5 to 0.45·n + 5 voxels) before the FSC")
    p.add_argument("--cone-envelope", metavar="NAME", action="append", default=[],
                   help="also score map NAME multiplied by the real-space envelope of cryoDRGN's "
                        "backproject_voxel insertion kernel (weight max(0, 1 − r) over the 8 corners, "
                        "no gridding correction): E(x) = FT of that kernel at |x|, E(0) = 1")
    p.add_argument("--orientations", action="store_true",
                   help="also try the 48 axis permutations/flips of each map and report the best")
    a = p.parse_args()
    t, apix = read_mrc(a.truth)
    n = t.shape[0]
    mask = 1.0
    if a.mask_sphere:
        c = np.arange(n) - n // 2
        r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
        mask = 0.5 - 0.5 * np.cos(np.pi * np.clip((0.45 * n + 5 - r) / 10, 0, 1))
        t = t * mask
    sh = shells(n)
    ft_t = ft(t)
    res = {"n": n, "apix": apix, "shell": list(range(n // 2 + 1)),
           "freq_per_A": [k / (n * apix) for k in range(n // 2 + 1)], "fsc": {}, "res_0.5_A": {},
           "res_0.143_A": {}}
    for spec in a.maps:
        name, path = spec.split("=", 1)
        v, ap = read_mrc(path)
        if v.shape != t.shape:
            sys.exit(f"{path}: shape {v.shape} differs from the truth's {t.shape}")
        v = v * mask
        c = fsc(ft(v), ft_t, sh, n)
        res["fsc"][name] = [round(float(x), 4) for x in c]
        res["res_0.5_A"][name] = round(crossing(c, n, apix, 0.5), 2)
        res["res_0.143_A"][name] = round(crossing(c, n, apix, 0.143), 2)
        if a.orientations:
            best = []
            for perm in itertools.permutations(range(3)):
                for flips in itertools.product([False, True], repeat=3):
                    w = np.transpose(v, perm)
                    for ax, fl in enumerate(flips):
                        if fl:  # flip about the centre voxel n/2 (rule 9), not about the array middle
                            w = np.roll(np.flip(w, ax), 1 if n % 2 == 0 else 0, ax)
                    cc = fsc(ft(w), ft_t, sh, n)
                    best.append((float(np.mean(cc[1:n // 4])), perm, flips))
            best.sort(key=lambda b: -b[0])
            print(f"[{name}] mean FSC over shells 1..{n // 4 - 1}, best orientations:", file=sys.stderr)
            for b in best[:4]:
                print(f"   {b[0]:+.4f}  transpose{b[1]} flips(z,y,x after transpose)={b[2]}", file=sys.stderr)
            ident = [b for b in best if b[1] == (0, 1, 2) and not any(b[2])][0]
            print(f"   {ident[0]:+.4f}  as written", file=sys.stderr)
    for name in a.cone_envelope:
        path = dict(m.split("=", 1) for m in a.maps)[name]
        v = read_mrc(path)[0] * cone_envelope(n) * mask
        c = fsc(ft(v), ft_t, sh, n)
        key = f"{name}×cone"
        res["fsc"][key] = [round(float(x), 4) for x in c]
        res["res_0.5_A"][key] = round(crossing(c, n, apix, 0.5), 2)
        res["res_0.143_A"][key] = round(crossing(c, n, apix, 0.143), 2)
    names = list(res["fsc"])
    two = len(names) >= 2
    print("| shell | 1/Å | " + " | ".join(f"FSC {x}" for x in names) +
          (f" | {names[0]} − {names[1]} |" if two else " |"))
    print("|---:|---:|" + "---:|" * (len(names) + two))
    for k in range(n // 2 + 1):
        vals = [res["fsc"][x][k] for x in names]
        row = f"| {k} | {k / (n * apix):.4f} | " + " | ".join(f"{x:.4f}" for x in vals)
        if two:
            row += f" | {vals[0] - vals[1]:+.4f}"
        print(row + " |")
    for x in names:
        print(f"{x}: FSC=0.5 at {res['res_0.5_A'][x]} Å, FSC=0.143 at {res['res_0.143_A'][x]} Å")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
