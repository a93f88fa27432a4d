#!/usr/bin/env python3
"""The cryoPROS HVAE of cryoforge (crates/pros/src/model.rs) written in PyTorch from the
same description (METHODS.md §3), for timing one training step (forward, backward, Adam)
side by side with cryoforge's `pros_step` example on the same configuration, batch and cores.

    python bench/pros_torch.py PRESET D BATCH STEPS     (PRESET: cpu | paper)

Prints the parameter count, per-step times, the mean images/s and the peak RSS (MiB).
"""
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    "paper": dict(nf=64, growth=32, z=16, nls=[2, 2, 4, 4], pose_hidden=[256, 512]),
    "cpu": dict(nf=32, growth=16, z=4, nls=[0, 1, 2, 2], pose_hidden=[128, 256]),
}


class RDB(nn.Module):
    def __init__(self, nf, g):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(nf + i * g, g if i < 4 else nf, 3, padding=1) for i in range(5)])
        for c in self.convs:
            nn.init.kaiming_normal_(c.weight)
            c.weight.data *= 0.1
            nn.init.zeros_(c.bias)

    def forward(self, x):
        feats = [x]
        for c in self.convs[:4]:
            feats.append(F.leaky_relu(c(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.convs[4](torch.cat(feats, 1))


class Head(nn.Module):
    def __init__(self, n_in, nf, g, z):
        super().__init__()
        self.merge = nn.Conv2d(n_in * nf, nf, 3, padding=1)
        self.mu, self.ls = RDB(nf, g), RDB(nf, g)
        self.mu_out, self.ls_out = nn.Conv2d(nf, z, 1), nn.Conv2d(nf, z, 1)
        for c in (self.mu_out, self.ls_out):
            nn.init.zeros_(c.weight)
            nn.init.zeros_(c.bias)

    def forward(self, *xs):
        x = self.merge(torch.cat(xs, 1))
        return self.mu_out(self.mu(x)), self.ls_out(self.ls(x))


class Layer(nn.Module):
    def __init__(self, level, nf, g, z):
        super().__init__()
        self.level = level
        self.enc, self.emb_proj, self.emb_pose = RDB(nf, g), RDB(nf, g), RDB(nf, g)
        self.post, self.prior = Head(4, nf, g, z), Head(3, nf, g, z)
        self.dec_merge = nn.Conv2d(nf + z, nf, 3, padding=1)
        self.dec = RDB(nf, g)


class Down(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.conv = nn.Conv2d(4 * nf, nf, 3, padding=1)

    def forward(self, x):
        return self.conv(F.pixel_unshuffle(x, 2))


class Up(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.conv = nn.Conv2d(nf // 4, nf, 3, padding=1)

    def forward(self, x):
        return self.conv(F.pixel_shuffle(x, 2))


class HVAE(nn.Module):
    def __init__(self, d, nf, growth, z, nls, pose_hidden):
        super().__init__()
        self.d, self.nf, self.levels = d, nf, len(nls)
        self.s = d >> (self.levels - 1)
        self.enc_in = nn.Conv2d(1, nf, 3, padding=1)
        self.enc_down = nn.ModuleList([Down(nf) for _ in range(self.levels - 1)])
        self.proj_in = nn.Conv2d(1, nf, 3, padding=1)
        self.proj_down = nn.ModuleList([Down(nf) for _ in range(self.levels - 1)])
        dims = [6] + pose_hidden + [self.s * self.s]
        self.pose_mlp = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.pose_in = nn.Conv2d(1, nf, 3, padding=1)
        self.pose_up = nn.ModuleList([Up(nf) for _ in range(self.levels - 1)])
        layers = []
        for lvl, n in enumerate(nls):
            layers += [Layer(lvl, nf, growth, z) for _ in range(n + (lvl > 0))]
        self.layers = nn.ModuleList(layers)
        self.dec_up = nn.ModuleList([Up(nf) for _ in range(self.levels - 1)])
        self.top = nn.Parameter(torch.zeros(1, nf, self.s, self.s))
        self.out1 = nn.Conv2d(nf, nf, 3, padding=1)
        self.out2 = nn.Conv2d(nf, 1, 3, padding=1)

    def condition(self, v, pose):
        p = [self.proj_in(v)]
        for dn in self.proj_down:
            p.append(dn(p[-1]))
        h = pose
        for i, lin in enumerate(self.pose_mlp):
            h = lin(h)
            if i < len(self.pose_mlp) - 1:
                h = F.leaky_relu(h, 0.2)
        e = [self.pose_in(h.view(-1, 1, self.s, self.s))]
        for lvl in reversed(range(self.levels - 1)):
            e.append(self.pose_up[lvl](e[-1]))
        return p, e[::-1]

    def forward(self, x, v, pose):
        p, e = self.condition(v, pose)
        a, feats, level = self.enc_in(x), [], 0
        for layer in self.layers:
            while level < layer.level:
                a = self.enc_down[level](a)
                level += 1
            a = layer.enc(a)
            feats.append(a)
        b = self.top.expand(x.shape[0], -1, -1, -1)
        level, kl = self.levels - 1, 0.0
        for li in reversed(range(len(self.layers))):
            layer = self.layers[li]
            while level > layer.level:
                b = self.dec_up[level - 1](b)
                level -= 1
            h, ee = layer.emb_proj(p[level]), layer.emb_pose(e[level])
            mu_p, ls_p = layer.prior(b, h, ee)
            mu_q, ls_q = layer.post(b, feats[li], h, ee)
            z = mu_q + ls_q.exp() * torch.randn_like(mu_q)
            kl = kl + (ls_p - ls_q + ((2 * (ls_q - ls_p)).exp() + ((mu_q - mu_p) * (-ls_p).exp()) ** 2) * 0.5 - 0.5).sum()
            b = layer.dec(layer.dec_merge(torch.cat([b, z], 1)))
        while level > 0:
            b = self.dec_up[level - 1](b)
            level -= 1
        return self.out2(F.relu(self.out1(b))), kl


def main():
    preset, d, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    m = HVAE(d, **{("growth" if k == "growth" else k): v for k, v in PRESETS[preset].items()})
    n = sum(p.numel() for p in m.parameters())
    print(f"preset {preset}: {n} parameters, {len(m.layers)} layers, box {d}, batch {batch}, threads {torch.get_num_threads()}")
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, d, d) * 0.1
    v = torch.randn(batch, 1, d, d) * 0.1
    pose = torch.randn(batch, 6)
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        out, kl = m(x, v, pose)
        loss = F.mse_loss(out, x) + 1e-4 * kl / (batch * d * d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 200.0)
        opt.step()
        dt = time.perf_counter() - t
        if s > 0:
            times.append(dt)
        print(f"step {s}: {dt:.3f} s")
    mean = sum(times) / len(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mean step {mean:.3f} s = {batch / mean:.1f} images/s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
