#!/usr/bin/env python3
"""PyTorch implementation of the reference (cryoSTAR) rendering pipeline, for
bench/render_vs_pytorch.sh: one training step's render + loss + backward, as the reference
code spends it (METHODS.md §0, §1):

  1. rotate the Cα coordinates of every structure of the batch by its pose,
  2. project the Gaussian density in real space, separably: img = Gyᵀ·diag(A)·Gx (batched
     matmul of [D, R] by [R, D]), pixel j at (j − D//2)·apix, σ = 2 Å,
  3. FFT, multiply by the CTF, low-pass to the bandwidth (a disk of radius D·apix/res in
     frequency-index units; no low-pass at full band), inverse FFT,
  4. shift the particle images by the pose shifts (bilinear grid_sample, as the reference),
     and low-pass them the same way (FFT, disk, inverse FFT) every step,
  5. masked correlation (mask radius 0.9375 of the half box), backward to the coordinates.

Prints one JSON line per run with images/s. Same random inputs as the Rust side (not the
same numbers: only the cost is compared).

    python bench/render_torch.py --residues 214 --box 128 --apix 1 --batch 64 --band 10 --iters 5 --threads 2
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--residues", type=int, default=214)
    p.add_argument("--box", type=int, default=128)
    p.add_argument("--apix", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--band", default="10")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    B, D, R = a.batch, a.box, a.residues
    sigma = 2.0
    radius = 6.0 * R ** (1 / 3)
    c = (torch.rand(R * 4, 3) * 2 - 1) * radius
    c = c[(c * c).sum(1) <= radius * radius][:R]
    coords = c.unsqueeze(0).repeat(B, 1, 1).clone().requires_grad_(True)
    amps = torch.rand(R) * 60 + 20
    q = torch.randn(B, 4)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1).view(B, 3, 3)
    shifts = torch.rand(B, 2) * 6 - 3
    pix = (torch.arange(D) - D // 2).float() * a.apix
    # CTF on the unshifted FFT grid (cryoDRGN formula), 300 kV, Cs 2.7, w 0.1
    fr = torch.fft.fftfreq(D, d=a.apix)
    ky, kx = torch.meshgrid(fr, fr, indexing="ij")
    s2 = kx * kx + ky * ky
    ang = torch.atan2(ky, kx)
    lam = 12.2643247 / math.sqrt(300e3 + 0.978466e-6 * 300e3 ** 2)
    dfu = torch.rand(B) * 15000 + 10000
    dfv = dfu - 300.0
    dfa = math.radians(30.0)
    df = 0.5 * (dfu + dfv)[:, None, None] + 0.5 * (dfu - dfv)[:, None, None] * torch.cos(2 * (ang - dfa))
    gamma = 2 * math.pi * (-0.5 * df * lam * s2 + 0.25 * 2.7e7 * lam ** 3 * s2 * s2)
    ctf = math.sqrt(1 - 0.01) * torch.sin(gamma) - 0.1 * torch.cos(gamma)
    if a.band == "full":
        lp = torch.ones(D, D)
        band = "full"
    else:
        res = float(a.band)
        kmax = math.floor(D * a.apix / res)
        ik = torch.fft.fftfreq(D) * D
        iky, ikx = torch.meshgrid(ik, ik, indexing="ij")
        lp = ((ikx * ikx + iky * iky) <= kmax * kmax).float()
        band = f"{a.band}A"
    h = torch.arange(D) - D // 2
    yy, xx = torch.meshgrid(h, h, indexing="ij")
    mask = ((xx * xx + yy * yy).float().sqrt() < 0.9375 * D / 2).float()
    n_in = mask.sum()
    images = torch.randn(B, D, D)
    # grid_sample grid for the shifts (normalised coordinates, align_corners=True as bilinear resampling)
    base_y, base_x = torch.meshgrid(torch.linspace(-1, 1, D), torch.linspace(-1, 1, D), indexing="ij")

    def step():
        cr = torch.einsum("bij,brj->bri", rot, coords)
        gx = torch.exp(-((pix[None, None, :] - cr[:, :, 0:1]) ** 2) / (2 * sigma ** 2))  # [B,R,D]
        gy = torch.exp(-((pix[None, None, :] - cr[:, :, 1:2]) ** 2) / (2 * sigma ** 2))
        img = torch.bmm((gy * amps[None, :, None]).transpose(1, 2), gx)  # [B,D(y),D(x)]
        f = torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1)))
        pred = torch.fft.fftshift(torch.fft.ifft2(f * ctf * lp).real, dim=(-2, -1))
        grid = torch.stack([base_x[None] - shifts[:, 0, None, None] * 2 / (D - 1),
                            base_y[None] - shifts[:, 1, None, None] * 2 / (D - 1)], -1)
        gt = F.grid_sample(images[:, None], grid, mode="bilinear", align_corners=True)[:, 0]
        gt = torch.fft.fftshift(torch.fft.ifft2(torch.fft.fft2(torch.fft.ifftshift(gt, dim=(-2, -1))) * lp).real,
                                dim=(-2, -1))
        pm, gm = pred * mask, gt * mask
        num = (pm * gm).sum((-2, -1))
        loss = -(num / ((gm.std((-2, -1)) + 1e-8) * (pm.std((-2, -1)) + 1e-8))).mean() / n_in
        loss.backward()
        coords.grad = None
        return float(loss.detach())

    step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    s = time.perf_counter() - t0
    print(json.dumps({"tool": "pytorch", "path": "reference", "residues": R, "box": D, "band": band,
                      "batch": B, "threads": a.threads, "torch": torch.__version__,
                      "images_per_s": round(a.iters * B / s, 2)}))


if __name__ == "__main__":
    main()
