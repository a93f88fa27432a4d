"""Information bound of the AdK closed→open benchmark (see BENCHMARKS.md §3): how well can
*any* method recover the frame (and the structure) of a particle from its image alone?

For each particle the oracle knows its true pose, shift and CTF, the 50 candidate structures
and the noise level; it scores every frame by the Gaussian likelihood of the image given the
noise-free rendering of that frame and reports
  - the maximum-likelihood frame and the posterior-mean frame vs the true frame (Spearman),
  - the RMSD of the posterior-mean structure (the minimum-MSE estimate) to the true frame.
Run by bench/oracle_bound.sh; needs numpy.

    python3 bench/oracle_bound.py SIM_DIR ORACLE_DIR N_FRAMES N_PARTICLES
"""
import csv
import sys
import tomllib

import numpy as np

sim, orc, nf, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def stack(path, count):
    with open(path, "rb") as f:
        h = np.frombuffer(f.read(1024), dtype=np.int32)
    nx, ny, ext = int(h[0]), int(h[1]), int(h[23])
    return np.memmap(path, dtype=np.float32, mode="r", offset=1024 + ext, shape=(count, ny, nx))


def models(path):
    out, cur = [], []
    for line in open(path):
        if line.startswith("ATOM") and line[12:16].strip() == "CA":
            cur.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
        elif line.startswith("ENDMDL"):
            out.append(np.array(cur))
            cur = []
    if cur:
        out.append(np.array(cur))
    return np.array(out)


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


rows = list(csv.DictReader(open(f"{sim}/truth.csv")))
frame = np.array([int(r["model"]) for r in rows])[:n]
sigma = tomllib.load(open(f"{sim}/run.toml", "rb"))["noise_sigma"]
images = np.array(stack(f"{sim}/particles.mrcs", len(rows))[:n], dtype=np.float64)
nll = np.zeros((n, nf))
for f in range(nf):
    clean = np.array(stack(f"{orc}/f{f}/particles.mrcs", n)[:n], dtype=np.float64)
    nll[:, f] = ((images - clean) ** 2).sum((1, 2)) / (2 * sigma**2)
post = np.exp(-(nll - nll.min(1, keepdims=True)))
post /= post.sum(1, keepdims=True)
traj = models(f"{sim}/model.pdb")
ml = nll.argmin(1)
pm = post @ np.arange(nf)
x_pm = np.einsum("nf,fra->nra", post, traj)
rmsd = lambda a, b: float(np.sqrt(((a - b) ** 2).sum(-1).mean(-1)).mean())
ref = rmsd(traj[0][None], traj[frame])
print(f"particles {n}, frames {nf}, noise sigma {sigma:.2f}")
print(f"oracle ML frame:             |Spearman| {spearman(ml, frame):.3f}")
print(f"oracle posterior-mean frame: |Spearman| {spearman(pm, frame):.3f}")
print(f"oracle posterior-mean structure: mean RMSD {rmsd(x_pm, traj[frame]):.3f} Å "
      f"(reference {ref:.3f} Å, ratio {rmsd(x_pm, traj[frame]) / ref:.3f})")
