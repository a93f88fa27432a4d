#!/usr/bin/env bash
# cryoSTAR / cryoSPHERE on the AdK closed → open trajectory (issues #6, #7; BENCHMARKS.md §3–4).
#
#   bash bench/adk_hetero.sh                        # acceptance set: 20,000 particles, SNR 0.01, 64 px at 1.5 Å/px
#   N=50000 BOX=128 APIX=1 SNR=1e-4 EPOCHS=5 SPHERE=0 PHASE2=0 bash bench/adk_hetero.sh   # the paper's setting
#
# Steps: `cryoforge morph` (50 frames, chain geometry kept), `simulate --models --density ca`
# (uniform poses, CTF defocus 1–2.5 µm), cryoSTAR with its defaults, the `--no-elastic` baseline
# (CONT=0 skips it), cryoSPHERE with its defaults (SPHERE=0 skips it), each analysed against the truth (analysis/truth.json: mean RMSD, per-frame RMSD,
# |Spearman(PC1, frame)|, clash fraction, local geometry). With PHASE2=1: consensus
# reconstruction and Phase II volumes at the mean latents of frames 0 and 49, each FSC'd
# against the ground-truth maps of those frames (Phase II: width 256, all particles, 6 epochs,
# 6 Å band: ≈ 1 h on 2 cores; P2_WIDTH, P2_EPOCHS, P2_N, P2_BAND change them). Needs python3
# with numpy (zframes.py).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N=${N:-20000}; BOX=${BOX:-64}; APIX=${APIX:-1.5}; SNR=${SNR:-0.01}; SEED=${SEED:-1}
EPOCHS=${EPOCHS:-}            # empty: each method's dataset-scaled default
SPHERE=${SPHERE:-1}; PHASE2=${PHASE2:-1}; CONT=${CONT:-1}
FRAMES=${FRAMES:-50}
ensure_time
bench_cryoforge
OUT=${OUT:-$ROOT/bench/out/adk_${N}_${BOX}_${SNR}}
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
EP=(); [[ -n "$EPOCHS" ]] && EP=(--epochs "$EPOCHS")
"$CF" -q morph data/demo/adk_closed.pdb data/demo/adk_open.pdb --frames "$FRAMES" --out "$OUT/traj.pdb"
"$CF" -q simulate --models "$OUT/traj.pdb" --density ca --n "$N" --box "$BOX" --apix "$APIX" --snr "$SNR" \
    --seed "$SEED" --out "$OUT/sim"
P=("$OUT/sim/particles.star" --reference "$OUT/sim/model.pdb" --seed "$SEED")
bench_timed star "$CF" -q star train "${P[@]}" --out "$OUT/star" "${EP[@]}"
bench_timed star_an "$CF" -q star analyze "$OUT/star" --coords-out "$OUT/star/coords.npy"
runs=(star)
if [[ $CONT == 1 ]]; then
    bench_timed cont "$CF" -q star train "${P[@]}" --out "$OUT/cont" --no-elastic "${EP[@]}"
    bench_timed cont_an "$CF" -q star analyze "$OUT/cont" --coords-out "$OUT/cont/coords.npy"
    runs+=(cont)
fi
if [[ $SPHERE == 1 ]]; then
    bench_timed sphere "$CF" -q sphere train "${P[@]}" --out "$OUT/sphere" "${EP[@]}"
    bench_timed sphere_an "$CF" -q sphere analyze "$OUT/sphere" --coords-out "$OUT/sphere/coords.npy"
    runs+=(sphere)
fi
echo
echo "| run | train wall s | particles/s | mean RMSD Å | reference RMSD Å | \|ρ(PC1, frame)\| | clash fraction | local geometry i+2/3/4 Å |"
echo "|---|---:|---:|---:|---:|---:|---:|---|"
for r in "${runs[@]}"; do
    python3 - "$OUT/$r" "$(time_field "$OUT/$r.time" wall_s)" "$r" <<'PY'
import json, sys
d, wall, name = sys.argv[1], sys.argv[2], sys.argv[3]
t = json.load(open(f"{d}/analysis/truth.json"))
ts = json.load(open(f"{d}/train_summary.json"))
lg = "/".join(f"{x:.2f}" for x in t.get("local_geometry_error_A", []))
print(f"| {name} | {wall} | {ts.get('images_per_s', 0):.0f} | {t['rmsd_mean_A']:.2f} | {t['rmsd_ref_mean_A']:.2f} | "
      f"{abs(t['pc1_frame_spearman']):.3f} | {t['clash_fraction']:.3f} | {lg} |")
PY
done
echo
echo "per-frame mean RMSD (frame: star / cont / reference):"
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
s = {f: (a, r) for f, a, r in json.load(open(f"{o}/star/analysis/truth.json"))["per_frame_rmsd"]}
try:
    c = {f: a for f, a, r in json.load(open(f"{o}/cont/analysis/truth.json"))["per_frame_rmsd"]}
except OSError:
    c = {}
print(", ".join(f"{f}: {s[f][0]:.2f}/{c.get(f, float('nan')):.2f}/{s[f][1]:.2f}" for f in sorted(s)))
PY
if [[ $PHASE2 == 1 ]]; then
    for f in 0 49; do
        "$CF" -q pdb2map "$OUT/sim/model.pdb" --no-center --density ca --model-index $f --box "$BOX" \
            --apix "$APIX" -o "$OUT/truth_f$f.mrc"
    done
    bench_timed consensus "$CF" -q reconstruct "$OUT/sim/particles.star" --out "$OUT/consensus"
    python3 bench/zframes.py "$OUT/star/analysis/latents.npy" "$OUT/sim/truth.csv" 0 49 >"$OUT/z_f0_f49.txt"
    bench_timed phase2 "$CF" -q star volume "$OUT/star" --width "${P2_WIDTH:-256}" --epochs "${P2_EPOCHS:-6}" \
        --max-particles "${P2_N:-$N}" --band-a "${P2_BAND:-6}" --z "$OUT/z_f0_f49.txt" --seed "$SEED"
    echo "| frame | consensus FSC 0.5 vs truth (Å) | Phase II FSC 0.5 vs truth (Å) |"
    echo "|---|---:|---:|"
    for f in 0 49; do
        i=$([[ $f == 0 ]] && echo 000 || echo 001)
        c=$("$CF" fsc "$OUT/consensus/map.mrc" "$OUT/truth_f$f.mrc" --json | python3 -c "import json,sys; print(round(json.load(sys.stdin)['resolution_0.5_A'], 2))")
        p=$("$CF" fsc "$OUT/star/volume/z/vol_$i.mrc" "$OUT/truth_f$f.mrc" --json | python3 -c "import json,sys; print(round(json.load(sys.stdin)['resolution_0.5_A'], 2))")
        echo "| $f | $c | $p |"
    done
fi
