#!/usr/bin/env python3
"""Peer benchmark for `cryoforge simulate --density atomic`: the same task in NumPy.

What a competent scientist would write with NumPy alone (no cryoforge code):

  setup (timed separately, not in the per-image rate)
    * parse the PDB, move the Cα centroid to the box centre (as `cryoforge simulate`
      does by default);
    * Gaussian-per-atom density on a D³ grid (amplitude = atomic number, σ = 1 Å),
      splatted with one vectorised np.bincount;
    * gridding pre-correction (÷ sinc² of the trilinear kernel), zero-pad ×2,
      one centred 3D FFT of the 2D-padded volume (complex64 afterwards).
  per image (batched over B images, all vectorised)
    * uniform random rotation (Shoemake quaternions) → RELION matrix A;
    * central slice: the 2D frequency k samples the 3D transform at Aᵀ(kx, ky, 0)
      (METHODS.md §0), by trilinear interpolation (8 flat gathers, own vectorised
      code), on the Hermitian half-plane kx ≥ 0 inside |k| < D/2;
    * image spectrum = −CTF · slice (cryoDRGN formula, METHODS.md §0; protein-bright
      as cryoforge) · e^{+2πi k·t} (shift, CONVENTIONS.md rule 5) · (−1)^{kx+ky}
      (puts the origin at pixel D/2);
    * irfft2 → image; white Gaussian noise with σ² = var(signal)/SNR, the signal
      variance pooled over the first batch (a pilot, as cryoforge's);
    * images streamed to an MRC stack (mode 2) so the I/O matches cryoforge's.

Prints one JSON line with the setup time, the image-loop time and the rates.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np

Z = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16}


def read_pdb(path):
    xyz, z, ca = [], [], []
    with open(path) as f:
        for line in f:
            if line.startswith("ENDMDL"):
                break
            if not line.startswith(("ATOM", "HETATM")):
                continue
            name = line[12:16].strip()
            el = line[76:78].strip() if len(line) >= 78 else ""
            if not el:  # CHARMM-style files leave the element column empty
                el = name.lstrip("0123456789")[:1]
            xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
            z.append(Z.get(el.upper(), 6))
            ca.append(name == "CA")
    xyz = np.asarray(xyz)
    return xyz - xyz[np.asarray(ca)].mean(0), np.asarray(z, dtype=np.float64)


def gaussian_density(xyz, z, d, apix, sigma=1.0):
    """Σ_atoms Z·N(x; atom, σ²I) sampled on the D³ grid, origin at voxel D/2, [z][y][x]."""
    r = int(np.ceil(3 * sigma / apix))
    g = xyz / apix + d // 2  # (x, y, z) in voxels
    base = np.floor(g).astype(np.int64)
    o = np.arange(-r, r + 2)
    off = np.stack(np.meshgrid(o, o, o, indexing="ij"), -1).reshape(-1, 3)
    vox = base[:, None, :] + off[None]  # (atoms, K, 3)
    d2 = (((vox - g[:, None, :]) * apix) ** 2).sum(-1)
    w = z[:, None] * np.exp(-d2 / (2 * sigma**2)) * (apix**3 / (2 * np.pi * sigma**2) ** 1.5)
    ok = ((vox >= 0) & (vox < d)).all(-1)
    flat = (vox[..., 2] * d + vox[..., 1]) * d + vox[..., 0]
    vol = np.bincount(flat[ok], weights=w[ok], minlength=d**3)
    return vol.reshape(d, d, d)


def padded_spectrum(vol, pad):
    """Centred 3D FFT of the volume zero-padded ×pad, after the gridding pre-correction."""
    d = vol.shape[0]
    n = pad * d
    x = (np.arange(d) - d // 2) / n
    s = np.sinc(x) ** 2  # trilinear interpolation kernel's transform, per axis
    v = vol / (s[:, None, None] * s[None, :, None] * s[None, None, :])
    big = np.zeros((n, n, n), dtype=np.float32)
    a = n // 2 - d // 2
    big[a:a + d, a:a + d, a:a + d] = v
    f = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(big)))
    return f.astype(np.complex64)


def random_rotations(rng, b):
    q = rng.standard_normal((b, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)  # (b, 3, 3), uniform on SO(3)


def ctf(s2, ang, dfu, dfv, dfang, kv, cs, w, phase):
    """cryoDRGN's CTF (METHODS.md §0). s2, ang: (M,); per-image params: (B, 1)."""
    v = kv * 1e3
    lam = 12.2639 / np.sqrt(v + 0.97845e-6 * v * v)
    df = 0.5 * (dfu + dfv + (dfu - dfv) * np.cos(2 * (ang - np.deg2rad(dfang))))
    gamma = 2 * np.pi * (-0.5 * df * lam * s2 + 0.25 * cs * 1e7 * lam**3 * s2 * s2) - np.deg2rad(phase)
    return np.sqrt(1 - w * w) * np.sin(gamma) - w * np.cos(gamma)


def write_mrc_header(f, n, d, apix, stats):
    h = bytearray(1024)
    struct.pack_into("<3i", h, 0, d, d, n)
    struct.pack_into("<i", h, 12, 2)  # mode 2: float32
    struct.pack_into("<3i", h, 28, d, d, n)
    struct.pack_into("<3f", h, 40, d * apix, d * apix, n * apix)
    struct.pack_into("<3f", h, 52, 90, 90, 90)
    struct.pack_into("<3i", h, 64, 1, 2, 3)
    struct.pack_into("<3f", h, 76, *stats)
    h[208:212] = b"MAP "
    h[212:216] = bytes([0x44, 0x44, 0, 0])
    f.seek(0)
    f.write(h)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--apix", type=float, default=1.0)
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--defocus-a", default="10000,25000")
    p.add_argument("--astig-a", type=float, default=200.0)
    p.add_argument("--shift-a", type=float, default=0.0)
    p.add_argument("--kv", type=float, default=300.0)
    p.add_argument("--cs-mm", type=float, default=2.7)
    p.add_argument("--amp-contrast", type=float, default=0.1)
    p.add_argument("--pad", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", required=True, help="output .mrcs")
    a = p.parse_args()
    d, apix, b = a.box, a.apix, a.batch
    rng = np.random.default_rng(a.seed)

    # ---------------- setup ----------------
    t0 = time.perf_counter()
    xyz, z = read_pdb(a.model)
    vol = gaussian_density(xyz, z, d, apix)
    t_density = time.perf_counter() - t0
    F = padded_spectrum(vol, a.pad)
    del vol
    n3 = F.shape[0]
    Ff = F.reshape(-1)
    # Half-plane frequency grid in irfft2 layout: rows ky (fft order), columns kx = 0..d/2.
    ky = np.fft.fftfreq(d) * d
    kx = np.arange(d // 2 + 1, dtype=np.float64)
    KY, KX = np.meshgrid(ky, kx, indexing="ij")
    inside = (KX**2 + KY**2) <= (d / 2 - 1) ** 2  # keeps every trilinear corner in the padded grid
    sel = np.flatnonzero(inside)  # the slice pixels computed per image
    kxs, kys = KX.ravel()[sel], KY.ravel()[sel]
    s2 = (kxs**2 + kys**2) / (d * apix) ** 2
    ang = np.arctan2(kys, kxs)
    centre = (-1.0) ** (kxs + kys)  # origin at pixel d/2
    kpad = np.stack([kxs, kys], 1).astype(np.float32) * a.pad  # padded-grid units
    corner = np.array([0, 1, n3, n3 + 1, n3 * n3, n3 * n3 + 1, n3 * n3 + n3, n3 * n3 + n3 + 1])
    dmin, dmax = (float(v) for v in a.defocus_a.split(","))
    t_setup = time.perf_counter() - t0

    # ---------------- images ----------------
    def clean_batch(m):
        A = random_rotations(rng, m).astype(np.float32)
        q = np.einsum("mj,bjk->bmk", kpad, A[:, :2, :]) + n3 // 2  # (x, y, z) padded voxels
        i0 = np.floor(q).astype(np.int64)
        f = (q - i0).astype(np.float32)
        base = (i0[..., 2] * n3 + i0[..., 1]) * n3 + i0[..., 0]
        fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
        gx, gy, gz = 1 - fx, 1 - fy, 1 - fz
        w8 = (gx * gy * gz, fx * gy * gz, gx * fy * gz, fx * fy * gz,
              gx * gy * fz, fx * gy * fz, gx * fy * fz, fx * fy * fz)
        sl = np.zeros(base.shape, np.complex64)
        for c, w in zip(corner, w8):
            sl += np.take(Ff, base + c) * w
        dfu = rng.uniform(dmin, dmax, (m, 1))
        dfv = dfu - rng.uniform(0, a.astig_a, (m, 1))
        dfang = rng.uniform(0, 360, (m, 1))
        c = ctf(s2, ang, dfu, dfv, dfang, a.kv, a.cs_mm, a.amp_contrast, 0.0)
        t = rng.uniform(-a.shift_a, a.shift_a, (m, 2)) / apix  # px
        ramp = np.exp(2j * np.pi * (t[:, :1] * kxs + t[:, 1:] * kys) / d)
        spec = np.zeros((m, d * (d // 2 + 1)), np.complex64)
        spec[:, sel] = sl * (-c * centre * ramp)
        return np.fft.irfft2(spec.reshape(m, d, d // 2 + 1), s=(d, d)).astype(np.float32)

    t1 = time.perf_counter()
    sigma = None
    lo, hi, tot = np.inf, -np.inf, 0.0
    with open(a.out, "wb") as fo:
        write_mrc_header(fo, a.n, d, apix, (0, 0, 0))
        for start in range(0, a.n, b):
            m = min(b, a.n - start)
            img = clean_batch(m)
            if sigma is None:  # pilot: the first batch sets the noise level
                sigma = float(np.sqrt(img.astype(np.float64).var() / a.snr)) if a.snr > 0 else 0.0
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
            lo, hi, tot = min(lo, img.min()), max(hi, img.max()), tot + float(img.sum(dtype=np.float64))
            img.tofile(fo)
        write_mrc_header(fo, a.n, d, apix, (lo, hi, tot / (a.n * d * d)))
    t_loop = time.perf_counter() - t1
    print(json.dumps({
        "tool": "numpy", "n": a.n, "box": d, "pad": a.pad, "batch": b,
        "numpy": np.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "density_s": round(t_density, 3), "setup_s": round(t_setup, 3), "images_s": round(t_loop, 3),
        "img_per_s_excl_setup": round(a.n / t_loop, 2),
        "img_per_s_incl_setup": round(a.n / (t_loop + t_setup), 2),
        "slice_pixels_per_image": int(sel.size), "noise_sigma": sigma,
    }))


if __name__ == "__main__":
    main()
