#!/usr/bin/env bash
# CryoSolver on a simulated mixture of four structures (AdK ×2, ×1, ×3, ×4 copies sharing
# the first copy's place; 62 / 17 / 13 / 8 %, the paper's proportions), against the paper's
# control (random latents). Latents: FEATURES=oracle (one-hot of the structure + N(0, 0.3²)
# noise: what a perfect encoder gives; the upper bound of the method), FEATURES=ief
# (a Cryo-IEF encoder pre-trained here for IEF_STEPS steps, or WEIGHTS=), or both.
# Prints k-means purity, the decoder's throughput and, per k-means centre, the real-space
# correlation of its volume with each ground-truth map (pdb2map of each model).
#   N=1500 BOX=32 APIX=4.5 EPOCHS=20 bash bench/solver_bench.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${CRYOFORGE:-$ROOT/target/release/cryoforge}
N=${N:-1500}; BOX=${BOX:-32}; APIX=${APIX:-4.5}; EPOCHS=${EPOCHS:-20}; SNR=${SNR:-0.1}
FEATURES=${FEATURES:-oracle}; IEF_STEPS=${IEF_STEPS:-600}; EXTRA=${EXTRA:-}
W=${WORK:-$(mktemp -d /tmp/solver_bench.XXXX)}; mkdir -p "$W"
cd "$W"
[ -x "$B" ] || (cd "$ROOT" && cargo build --release -p cryoforge)
python3 - "$ROOT/data/demo/adk_closed.pdb" <<'PY'
import sys
lines=[l for l in open(sys.argv[1]) if l.startswith(('ATOM','HETATM'))]
xyz=[(float(l[30:38]),float(l[38:46]),float(l[46:54])) for l in lines]
c=[sum(v[k] for v in xyz)/len(xyz) for k in range(3)]
def tr(cp,v):
    v=[v[0]-c[0],v[1]-c[1],v[2]-c[2]]
    return [v,[v[0]+38,-v[2],v[1]],[-v[1],v[0]+38,v[2]],[v[2],v[1],-v[0]+38]][cp]
out=[]
for m,copies in enumerate([2,1,3,4]):
    out.append(f"MODEL     {m+1:4d}\n")
    for cp in range(copies):
        for l,v in zip(lines,xyz):
            q=tr(cp,v); out.append(f"{l[:30]}{q[0]:8.3f}{q[1]:8.3f}{q[2]:8.3f}{l[54:]}")
    out.append("ENDMDL\n")
open('mix.pdb','w').write(''.join(out)+"END\n")
open('w.txt','w').write("62\n17\n13\n8\n")
PY
$B simulate --models mix.pdb --model-weights w.txt --n "$N" --box "$BOX" --apix "$APIX" --snr "$SNR" --shift-a 4 --seed 5 --out sim -q
$B reconstruct sim/particles.star --out consensus -q
for m in 0 1 2 3; do $B pdb2map sim/model.pdb --no-center --model-index $m --box "$BOX" --apix "$APIX" -o truth$m.mrc -q; done
python3 - <<'PY'
import random,struct
random.seed(1)
lab=[int(l.split(',')[1]) for l in open('sim/truth.csv').read().splitlines()[1:]]
open('labels.txt','w').write(''.join(f"{l}\n" for l in lab))
d=[(1.0 if k==l else 0.0)+random.gauss(0,0.3) for l in lab for k in range(8)]
hdr="{'descr': '<f4', 'fortran_order': False, 'shape': (%d, 8), }"%len(lab)
hdr=hdr+' '*(64-(10+len(hdr)+1)%64)+'\n'
open('oracle.npy','wb').write(b'\x93NUMPY\x01\x00'+struct.pack('<H',len(hdr))+hdr.encode()+struct.pack('<%df'%len(d),*d))
PY
cat > score.py <<'PY'
import sys,struct,math,json
def rd(p):
    b=open(p,'rb').read(); nx,ny,nz=struct.unpack('<3i',b[:12]); ns=struct.unpack('<i',b[92:96])[0]
    return struct.unpack('<%df'%(nx*ny*nz),b[1024+ns:1024+ns+4*nx*ny*nz])
def cc(a,b):
    n=len(a);ma=sum(a)/n;mb=sum(b)/n
    return sum((x-ma)*(y-mb) for x,y in zip(a,b))/math.sqrt(sum((x-ma)**2 for x in a)*sum((y-mb)**2 for y in b))
run=sys.argv[1]; T=[rd(f'truth{g}.mrc') for g in range(4)]
lab=[int(x) for x in open('labels.txt')]; km=[int(x) for x in open(f'{run}/analysis/kmeans/labels.txt')]
k=max(km)+1; maj=[]
for c in range(k):
    m=[lab[i] for i in range(len(lab)) if km[i]==c]; maj.append(max(range(4),key=m.count) if m else -1)
pur=sum(sum(1 for i in range(len(lab)) if km[i]==c and lab[i]==maj[c]) for c in range(k))/len(lab)
print(f"{run}: k-means purity {100*pur:.1f} %")
own=0
for c in range(k):
    v=rd(f'{run}/analysis/kmeans/vol_{c:03d}.mrc'); r=[cc(v,t) for t in T]; b=r.index(max(r)); own+=b==maj[c]
    print(f"  centre {c} (majority structure {maj[c]}): cc " + ' '.join(f'{x:.3f}' for x in r) + f" → best {b}")
print(f"  centres whose volume is closest to their own structure: {own}/{k}")
PY
run() { # name, feature options
  /usr/bin/time -f "%e s wall, %M KiB peak" $B solver train sim/particles.star $2 --reference consensus/map.mrc --epochs "$EPOCHS" $EXTRA --out "$1" -q
  python3 -c "import json;l=[json.loads(x) for x in open('$1/train.jsonl')];print('$1: final loss %.4f, %.0f particles/s (median epoch)'%(l[-1]['loss'],sorted(e['particles_per_s'] for e in l)[len(l)//2]))"
  $B solver analyze "$1" --k 4 --pcs 0 -q
  python3 score.py "$1"
}
case "$FEATURES" in oracle|both) run oracle "--features oracle.npy";; esac
case "$FEATURES" in ief|both)
  if [ -z "${WEIGHTS:-}" ]; then $B ief pretrain sim/particles.star --preset cpu --img-size "$BOX" --steps "$IEF_STEPS" --out ief -q; WEIGHTS=ief/weights.safetensors; fi
  run ief "--weights $WEIGHTS";;
esac
run random "--random-features --random-dim 8"
echo "work folder: $W"
