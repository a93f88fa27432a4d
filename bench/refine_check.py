"""Does the half-map FSC predict the FSC to the truth? For a refinement folder's fsc.csv
(unmasked half-map FSC F) and its map.mrc against the true map: the largest
|sqrt(2F/(1+F)) − FSC(map, truth)| over the shells up to 2/3 of Nyquist.

    python3 bench/refine_check.py DIR/fsc.csv DIR/map.mrc truth.mrc CRYOFORGE_BINARY
"""
import json
import math
import subprocess
import sys

csv, mp, truth, cf = sys.argv[1:5]
half = []
with open(csv) as f:
    head = f.readline().strip().split(",")
    col = head.index("fsc_unmasked")
    for line in f:
        half.append(float(line.split(",")[col]))
out = subprocess.run([cf, "fsc", mp, truth, "--json", "-q"], capture_output=True, text=True, check=True)  # stderr: the human line
ref = json.loads(out.stdout)["fsc"]
kmax = int(2 / 3 * (len(half) - 1))
worst, at = 0.0, 0
for k in range(1, kmax + 1):
    f = max(half[k], 0.0)
    pred = math.sqrt(2 * f / (1 + f))
    d = abs(pred - ref[k])
    if d > worst:
        worst, at = d, k
print(f"half-map FSC predicts FSC to truth within {worst:.3f} (worst shell {at} of {kmax})")
