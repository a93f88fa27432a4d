"""A PyTorch ViT of the Cryo-IEF family with the published tensor names, for parity checks of
`cryoforge ief` / `ranker` (this project's own code, written from METHODS.md §4; not the
authors').

    python bench/ief_torch.py fixture OUT_DIR      # the tiny model committed as a CI fixture
    python bench/ief_torch.py base OUT_DIR         # ViT-B/14 at 224 px with both heads (peer test)
    python bench/ief_torch.py time WEIGHTS N BATCH # scoring throughput (bench/ranker_vs_pytorch.sh)

Writes OUT_DIR/weights.safetensors (backbone + v1.5 head), OUT_DIR/weights_v1.safetensors
(backbone under `base_encoder.` + a v1 2-way head), and OUT_DIR/io.safetensors with
`raw_up` / `raw_down` (raw images smaller / larger than the input), `pre_up` / `pre_down`
(their preprocessing, NumPy/SciPy), `x` (model inputs), `cls` (CLS tokens), `features`
(L2-normalised), `score_v15`, `score_v1`.
"""
import math
import sys
import time

import numpy as np
import scipy.ndimage
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

MEAN, STD = 0.53786290141223, 0.11803331075935841


class Attention(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(c, 3 * c, bias=True)
        self.proj = nn.Linear(c, c)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, c, m):
        super().__init__()
        self.fc1 = nn.Linear(c, m)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(m, c)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, c, heads, m):
        super().__init__()
        self.norm1 = nn.LayerNorm(c, eps=1e-6)
        self.attn = Attention(c, heads)
        self.norm2 = nn.BatchNorm1d(c)  # MoCo v3 / Cryo-IEF: BatchNorm over all tokens
        self.mlp = Mlp(c, m)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        b, n, c = x.shape
        return x + self.mlp(self.norm2(x.reshape(b * n, c)).reshape(b, n, c))


class PatchEmbed(nn.Module):
    def __init__(self, p, c):
        super().__init__()
        self.proj = nn.Conv2d(1, c, kernel_size=p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos(grid, c):
    gw = torch.arange(grid, dtype=torch.float32)
    gh = torch.arange(grid, dtype=torch.float32)
    gw, gh = torch.meshgrid(gw, gh, indexing="ij")
    q = c // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float32) / q))
    ow = torch.einsum("m,d->md", gw.flatten(), omega)
    oh = torch.einsum("m,d->md", gh.flatten(), omega)
    pe = torch.cat([torch.sin(ow), torch.cos(ow), torch.sin(oh), torch.cos(oh)], dim=1)[None]
    return torch.cat([torch.zeros(1, 1, c), pe], dim=1)


class Vit(nn.Module):
    def __init__(self, img, p, c, depth, heads, m):
        super().__init__()
        self.patch_embed = PatchEmbed(p, c)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c) * 0.02)
        self.pos_embed = nn.Parameter(sincos(img // p, c), requires_grad=False)
        self.blocks = nn.ModuleList([Block(c, heads, m) for _ in range(depth)])

    def forward(self, x):
        t = self.patch_embed(x[:, None])
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for b in self.blocks:
            t = b(t)
        return t[:, 0]


class HeadV15(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.mlp_classifier = nn.Sequential(nn.Linear(c, 1))

    def forward(self, cls):
        return torch.sigmoid(self.mlp_classifier(self.norm(cls)))[:, 0]


def preprocess(img, size):
    """NumPy: resample (Fourier crop / spline zoom), min-max to uint8 with floor, normalise."""
    d = img.shape[0]
    if d > size:
        f = np.fft.fftshift(np.fft.fft2(img))
        c, h = d // 2, size // 2
        f = f[c - h:c - h + size, c - h:c - h + size]
        r = np.real(np.fft.ifft2(np.fft.ifftshift(f))) * (size * size) / (d * d)
    elif d < size:
        r = scipy.ndimage.zoom(img.astype(np.float64), size / d, order=3, mode="mirror", grid_mode=False)
    else:
        r = img.astype(np.float64)
    lo, hi = r.min(), r.max()
    u = np.floor(255.0 * (r - lo) / (hi - lo)) if hi > lo else np.zeros_like(r)
    return ((u / 255.0 - MEAN) / STD).astype(np.float32)


def randomize(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1.0 / math.sqrt(p.shape[-1])))
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.3)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                mod.num_batches_tracked.fill_(7)


def make(out, img, p, c, depth, heads, m, n_img, d_up, d_down):
    g = torch.Generator().manual_seed(1)
    vit, head = Vit(img, p, c, depth, heads, m), HeadV15(c)
    head_v1 = nn.Linear(c, 2)
    randomize(vit, g)
    randomize(head, g)
    randomize(head_v1, g)
    vit.eval(), head.eval(), head_v1.eval()
    sd = {k: v.contiguous() for k, v in vit.state_dict().items()}
    save_file({**sd, **{"head." + k: v for k, v in head.state_dict().items()}}, f"{out}/weights.safetensors")
    v1 = {"base_encoder." + k: v for k, v in sd.items()}
    v1.update({"head.mlp_classifier.0." + k: v.contiguous() for k, v in head_v1.state_dict().items()})
    v1["momentum_encoder.cls_token"] = sd["cls_token"].clone()
    save_file(v1, f"{out}/weights_v1.safetensors")
    rng = np.random.default_rng(2)
    raw_up = rng.normal(size=(n_img, d_up, d_up)).astype(np.float32)
    raw_down = rng.normal(size=(n_img, d_down, d_down)).astype(np.float32)
    pre_up = np.stack([preprocess(x, img) for x in raw_up])
    pre_down = np.stack([preprocess(x, img) for x in raw_down])
    x = torch.from_numpy(pre_up.copy())
    with torch.no_grad():
        cls = vit(x)
        feats = torch.nn.functional.normalize(cls, dim=1)
        s15 = head(cls)
        s1 = head_v1(cls).softmax(-1)[:, 1]
    save_file({
        "raw_up": torch.from_numpy(raw_up), "raw_down": torch.from_numpy(raw_down),
        "pre_up": torch.from_numpy(pre_up), "pre_down": torch.from_numpy(pre_down),
        "x": x, "cls": cls.contiguous(), "features": feats.contiguous(), "score_v15": s15.contiguous(),
        "score_v1": s1.contiguous(),
    }, f"{out}/io.safetensors")
    print(f"wrote {out}: {sum(p.numel() for p in vit.parameters() if p.requires_grad)} backbone parameters, "
          f"{len(sd) + 4} tensors with the v1.5 head")


def timing(weights, n, batch):
    sd = load_file(weights)
    c = sd["pos_embed"].shape[2]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    vit, head = Vit(224, 14, c, depth, 12, sd["blocks.0.mlp.fc1.weight"].shape[0]), HeadV15(c)
    vit.load_state_dict({k: v for k, v in sd.items() if not k.startswith("head.")})
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    vit.eval(), head.eval()
    x = torch.randn(batch, 224, 224)
    with torch.no_grad():
        head(vit(x[:2]))
        t0 = time.time()
        done = 0
        while done < n:
            head(vit(x))
            done += batch
    dt = time.time() - t0
    print(f"pytorch {torch.__version__} threads {torch.get_num_threads()}: {done} particles in {dt:.2f} s = {done / dt:.2f}/s")


if __name__ == "__main__":
    torch.manual_seed(0)
    if sys.argv[1] == "fixture":
        make(sys.argv[2], img=28, p=7, c=32, depth=2, heads=4, m=64, n_img=3, d_up=20, d_down=40)
    elif sys.argv[1] == "base":
        make(sys.argv[2], img=224, p=14, c=768, depth=12, heads=12, m=3072, n_img=4, d_up=128, d_down=256)
    elif sys.argv[1] == "time":
        timing(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__)
