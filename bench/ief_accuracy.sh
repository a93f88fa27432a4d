#!/usr/bin/env bash
# Cryo-IEF / CryoRanker accuracy on simulated particles (issue "Cryo-IEF and CryoRanker"):
#  1. six structures of different size and shape (AdK and assemblies of 2–6 AdK copies from
#     bench/make_assembly.py), all poses, CTF, SNR $SNR, 64 px at 3 Å/px: `ief pretrain`
#     with the default (cpu) preset on $N_TRAIN particles, then k-NN (k = 1) accuracy of the
#     features of $N_TEST particles it never saw, for the structure and for 12 pose classes
#     (nearest of the 12 icosahedron vertices to the viewing direction, structure 1 only);
#  2. CryoRanker: `ranker train --init` on three of the structures with 40 % junk of all
#     kinds, then `ranker score` on a set made from a structure it never saw with 35 % junk:
#     ROC AUC good vs junk, and the FSC to the truth (true poses) of the top-N subset vs a
#     random subset of the same size (N = the number of good particles).
#   bash bench/ief_accuracy.sh                    (defaults: N_TRAIN=20000 N_TEST=2000 SNR=0.1)
#   EPOCHS=5 bash bench/ief_accuracy.sh           (shorter pre-training)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N_TRAIN=${N_TRAIN:-20000}; N_TEST=${N_TEST:-2000}; SNR=${SNR:-0.1}
N_RANK=${N_RANK:-6000}; N_RTEST=${N_RTEST:-4000}
ensure_time
bench_cryoforge
OUT=$ROOT/bench/out/ief_accuracy
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
for k in 2 3 4 5 6; do
    [[ -f $OUT/asm$k.pdb ]] || python3 bench/make_assembly.py data/demo/adk_closed.pdb $k "$OUT/asm$k.pdb" $((k + 20)) >/dev/null
done
python3 - "$OUT" <<'EOF'
import sys
out = sys.argv[1]
def models(files, path):
    with open(path, "w") as o:
        for i, f in enumerate(files):
            o.write(f"MODEL     {i + 1:4d}\n")
            for l in open(f):
                if l.startswith("ENDMDL"):
                    break
                if l.startswith(("ATOM", "HETATM")):
                    o.write(l)
            o.write("ENDMDL\n")
        o.write("END\n")
six = ["data/demo/adk_closed.pdb"] + [f"{out}/asm{k}.pdb" for k in range(2, 7)]
models(six, f"{out}/six.pdb")
models(six[:3], f"{out}/rank_train.pdb")
EOF
"$CF" -q simulate --models "$OUT/six.pdb" --n "$N_TRAIN" --box 64 --apix 3 --snr "$SNR" --seed 11 --out "$OUT/train"
"$CF" -q simulate --models "$OUT/six.pdb" --n "$N_TEST" --box 64 --apix 3 --snr "$SNR" --seed 12 --out "$OUT/test"
"$CF" -q simulate --model data/demo/adk_closed.pdb --n "$N_TEST" --box 64 --apix 3 --snr "$SNR" --seed 13 --out "$OUT/test_pose"
# 12 pose classes: nearest icosahedron vertex to the viewing direction (rot, tilt).
python3 - "$OUT/test_pose/truth.csv" "$OUT/test_pose/pose_classes.csv" <<'EOF'
import csv, math, sys
p = (1 + 5 ** 0.5) / 2
verts = [(0, s1, s2 * p) for s1 in (-1, 1) for s2 in (-1, 1)]
verts += [(s1, s2 * p, 0) for s1 in (-1, 1) for s2 in (-1, 1)]
verts += [(s2 * p, 0, s1) for s1 in (-1, 1) for s2 in (-1, 1)]
rows = list(csv.DictReader(open(sys.argv[1])))
with open(sys.argv[2], "w") as o:
    o.write("index,pose_class\n")
    for r in rows:
        a, t = math.radians(float(r["rot_deg"])), math.radians(float(r["tilt_deg"]))
        d = (math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t))
        best = max(range(12), key=lambda i: sum(x * y for x, y in zip(d, verts[i])))
        o.write(f"{r['index']},{best}\n")
EOF
EP=()
[[ -n "${EPOCHS:-}" ]] && EP=(--epochs "$EPOCHS")
bench_timed pretrain "$CF" -v ief pretrain "$OUT/train/particles.star" --out "$OUT/ief" "${EP[@]}"
W=$OUT/ief/weights.safetensors
"$CF" -q ief features "$OUT/test/particles.star" --weights "$W" -o "$OUT/test_features.npy"
"$CF" -q ief features "$OUT/test_pose/particles.star" --weights "$W" -o "$OUT/pose_features.npy"
"$CF" ief knn "$OUT/test_features.npy" --labels "$OUT/test/truth.csv" --column model --json >"$OUT/knn_structure.json"
"$CF" ief knn "$OUT/pose_features.npy" --labels "$OUT/test_pose/pose_classes.csv" --column pose_class --json >"$OUT/knn_pose.json"
"$CF" -q ief cluster "$OUT/test/particles.star" --features "$OUT/test_features.npy" --k 6 \
    --labels "$OUT/test/truth.csv" --column model --out "$OUT/clusters"

# CryoRanker: train on three structures with junk, test on an unseen structure with junk.
"$CF" -q simulate --models "$OUT/rank_train.pdb" --n "$N_RANK" --box 64 --apix 3 --snr "$SNR" \
    --junk 0.4 --junk-kinds all --seed 21 --out "$OUT/rank_train"
"$CF" -q simulate --model "$OUT/asm5.pdb" --n "$N_RTEST" --box 64 --apix 3 --snr "$SNR" \
    --junk 0.35 --junk-kinds all --seed 22 --out "$OUT/rank_test"
bench_timed ranker_train "$CF" -v ranker train "$OUT/rank_train/particles.star" --labels "$OUT/rank_train/truth.csv" \
    --column junk --good-values none --init "$W" --out "$OUT/ranker"
good=$(awk -F, 'NR > 1 && $NF == "none"' "$OUT/rank_test/truth.csv" | wc -l)
"$CF" -q ranker score "$OUT/rank_test/particles.star" --weights "$OUT/ranker/weights.safetensors" \
    --out "$OUT/ranked" --top "$good"
# A random subset of the same size, and the truth map.
python3 - "$OUT" "$good" <<'EOF'
import random, sys
out, n = sys.argv[1], int(sys.argv[2])
lines = open(f"{out}/rank_test/particles.star").read().splitlines()
# the particle table is the last loop_ block: header lines start with '_'
last = max(i for i, l in enumerate(lines) if l.strip() == "loop_")
j = last + 1
while j < len(lines) and lines[j].startswith("_"):
    j += 1
head, rows = lines[:j], [l for l in lines[j:] if l.strip()]
random.seed(5)
pick = sorted(random.sample(range(len(rows)), n))
open(f"{out}/random_subset.star", "w").write("\n".join(head + [rows[i] for i in pick]) + "\n")
EOF
"$CF" -q pdb2map "$OUT/asm5.pdb" -o "$OUT/truth_asm5.mrc" --box 64 --apix 3
"$CF" -q reconstruct "$OUT/ranked/top_$good.star" --reference "$OUT/truth_asm5.mrc" --out "$OUT/rec_top"
"$CF" -q reconstruct "$OUT/random_subset.star" --reference "$OUT/truth_asm5.mrc" --out "$OUT/rec_random"
python3 - "$OUT" <<'EOF'
import csv, json, sys
out = sys.argv[1]
truth = {r["index"]: r["junk"] == "none" for r in csv.DictReader(open(f"{out}/rank_test/truth.csv"))}
sc = [(float(r["score"]), truth[r["index"]]) for r in csv.DictReader(open(f"{out}/ranked/scores.csv"))]
pos = [s for s, g in sc if g]
neg = [s for s, g in sc if not g]
auc = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
ks = json.load(open(f"{out}/knn_structure.json"))
kp = json.load(open(f"{out}/knn_pose.json"))
cl = json.load(open(f"{out}/clusters/summary.json"))
tr = json.load(open(f"{out}/ief/train.json"))
ft, fr = json.load(open(f"{out}/rec_top/summary.json")), json.load(open(f"{out}/rec_random/summary.json"))
print(f"| pre-training | {tr['steps']} steps, {tr['elapsed_s'] / 60:.1f} min, {tr['particles_per_s']:.1f} particles/s, final loss {tr['final_loss']:.3f}, pretext top-1 {tr['final_top1']:.3f} |")
print(f"| k-NN (k = 1), 6 structures, unseen particles | {100 * ks['accuracy']:.2f} % |")
print(f"| k-NN (k = 1), 12 pose classes | {100 * kp['accuracy']:.2f} % |")
print(f"| k-means (k = 6) purity / ARI | {100 * cl['purity']:.1f} % / {cl['adjusted_rand_index']:.3f} |")
print(f"| ranker ROC AUC on an unseen structure (good vs junk) | {auc:.4f} |")
k = "resolution_0.5_vs_reference_A"
print(f"| FSC 0.5 to truth (true poses), top-{len(pos)} vs random subset of the same size | {ft[k]:.2f} Å vs {fr[k]:.2f} Å |")
EOF
