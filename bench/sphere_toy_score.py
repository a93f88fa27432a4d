#!/usr/bin/env python3
"""Score `cryoforge sphere analyze` outputs on the rigid-domain toy (cryoSPHERE App. B.1).

usage: sphere_toy_score.py ANALYSIS_DIR TOY_DIR TRUTH_CSV

- body assignment: the moving segment is the segment holding most residues of the moving
  body (toy.json first..last); a residue is correct when it is in the body and in that
  segment, or outside the body and in any other segment;
- angles: predicted signed angle of the moving segment = angle · sign(axis · true axis),
  against the particle's true angle (truth.csv `model` -> angles.csv); |Pearson| reported;
- axis: mean over particles of |predicted axis · true axis|.
Prints one JSON object.
"""
import csv, json, sys
import numpy as np

an, toy, truth = sys.argv[1:4]
info = json.load(open(f"{toy}/toy.json"))
lo, hi = info["first"], info["last"]
true_axis = np.array(info["axis"])
seg = list(csv.DictReader(open(f"{an}/segmentation.csv")))
resid = np.array([int(r["resid"]) for r in seg])
hard = np.array([int(r["segment"]) for r in seg])
body = (resid >= lo) & (resid <= hi)
segs, counts = np.unique(hard[body], return_counts=True)
moving = int(segs[np.argmax(counts)])
correct = np.where(body, hard == moving, hard != moving)
all_counts = {int(s): int((hard == s).sum()) for s in sorted(set(hard.tolist()))}
angles = {int(r["model"]): float(r["angle_rad"]) for r in csv.DictReader(open(f"{toy}/angles.csv"))}
true = np.array([angles[int(r["model"])] for r in csv.DictReader(open(truth))])
m = np.loadtxt(f"{an}/segment_motions.csv", delimiter=",", skiprows=1)
m = m[m[:, 1] == moving]
m = m[np.argsort(m[:, 0])]
n = len(m)
true = true[:n]
ax = m[:, 3:6]
dots = ax @ true_axis
pred = np.radians(m[:, 2]) * np.sign(dots)
r = np.corrcoef(pred, true)[0, 1]
print(json.dumps({
    "n_particles": n,
    "moving_segment": moving,
    "segment_counts": all_counts,
    "body_residues": int(body.sum()),
    "fraction_correct_body": float(correct.mean()),
    "abs_pearson_angle": float(abs(r)),
    "mean_abs_axis_dot": float(np.abs(dots).mean()),
    "pred_angle_deg_mean_sd": [float(np.degrees(pred.mean())), float(np.degrees(pred.std()))],
    "true_angle_deg_mean_sd": [float(np.degrees(true.mean())), float(np.degrees(true.std()))],
}, indent=1))
