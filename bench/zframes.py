"""Mean latent of the particles of given frames (for `star volume --z`):

    python3 bench/zframes.py LATENTS.npy TRUTH.csv FRAME... > z.txt
"""
import sys, csv, numpy as np
z = np.load(sys.argv[1])
rows = list(csv.DictReader(open(sys.argv[2])))
key = 'model' if 'model' in rows[0] else [k for k in rows[0] if k != 'index'][0]
frame = {int(r['index']): int(r[key]) for r in rows}
fr = np.array([frame[i] for i in range(len(z))])
for f in map(int, sys.argv[3:]):
    m = z[fr == f].mean(0)
    print(' '.join(f'{v:.6f}' for v in m))
    print(f'frame {f}: {int((fr == f).sum())} particles', file=sys.stderr)
