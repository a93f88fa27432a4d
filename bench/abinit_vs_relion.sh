#!/usr/bin/env bash
# Ab initio and 2D classification side by side with RELION 3.1.3 (issue: abinit / class2d),
# on the same data and the same cores, one run:
#   1. initial model: the uniform set of bench/refine_vs_relion.sh (8-AdK assembly, 163 Å,
#      10,000 particles of 64 px, SNR 0.05). cryoforge `abinit` (defaults) against RELION's
#      SGD initial model with the RELION 3.1 GUI defaults (`relion_refine --denovo_3dref --sgd`:
#      50 + 200 + 50 mini-batch iterations of 100 → 500 particles, 35 → 15 Å, HEALPix order 1;
#      RELION 3.1 has SGD, not RELION 4's VDAM `--grad`). Both maps docked onto the truth with
#      `align-maps --try-hand`, FSC to truth.
#   2. 2D classification: 10,000 particles of the AdK monomer and dimer (two models) with 30 %
#      junk (`simulate --junk 0.3`), 64 px, SNR 0.05; cryoforge `class2d --classes 20`
#      (defaults otherwise) against RELION Class2D (K = 20, 25 iterations, τ² fudge 2, ψ step
#      10°, the GUI's defaults). Scored from truth.csv: junk in junk-majority classes, purity.
# Optional: cryoDRGN's abinit_homo from PyPI when CRYODRGN_ABINIT=1 (hours on 2 cores).
#   bash bench/abinit_vs_relion.sh          (ONLY=abinit or ONLY=class2d for one part)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_time
bench_cryoforge
command -v relion_refine >/dev/null || { echo "relion_refine missing: apt-get install -y relion" >&2; exit 1; }
ONLY=${ONLY:-}
U=$ROOT/bench/out/refine/uniform
OUT=$ROOT/bench/out/abinit_vs_relion
mkdir -p "$OUT"
RES=$OUT/results.txt
echo "== machine: $(machine_info)" | tee -a "$RES"
fsc_of() {
    "$CF" fsc "$1" "$2" --json -q | python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.2f" % d["resolution_0.5_A"])'
}
row() { # label, time file, accuracy
    echo "$1 | $(time_field "$2" wall_s) s | $(time_field "$2" cpu_s) s | $(time_field "$2" rss_mib) MiB | $3" | tee -a "$RES"
}

if [[ -z "$ONLY" || "$ONLY" == abinit ]]; then
    [[ -f $U/sim/particles.star && -f $U/truth.mrc ]] ||
        { echo "run SETS=uniform SKIP_RELION=1 bash bench/refine_vs_relion.sh first" >&2; exit 1; }
    A=$OUT/abinit
    rm -rf "$A" && mkdir -p "$A/relion"
    (OUT=$A; bench_timed cryoforge "$CF" abinit "$U/sim/particles.star" --out "$A/cf")
    "$CF" align-maps "$A/cf/class_001.mrc" "$U/truth.mrc" -o "$A/cf_aligned.mrc" --try-hand -q
    row "abinit cryoforge" "$A/cryoforge.time" "FSC 0.5 to truth $(fsc_of "$A/cf_aligned.mrc" "$U/truth.mrc") Å"
    # RELION reads the STAR relative to its folder; 163 Å assembly → 200 Å mask diameter.
    (cd "$U/sim" && OUT=$A && bench_timed relion relion_refine --i particles.star --o "$A/relion/run" \
        --denovo_3dref --sgd --sgd_ini_iter 50 --sgd_inbetween_iter 200 --sgd_fin_iter 50 \
        --sgd_write_iter 20 --sgd_ini_resol 35 --sgd_fin_resol 15 --sgd_ini_subset 100 \
        --sgd_fin_subset 500 --ctf --K 1 --sym C1 --flatten_solvent --zero_mask \
        --dont_combine_weights_via_disc --pool 3 --pad 1 --particle_diameter 200 \
        --oversampling 1 --healpix_order 1 --offset_range 6 --offset_step 2 --j 2)
    map=$(ls "$A"/relion/run_it*_class001.mrc | sort | tail -1)
    "$CF" align-maps "$map" "$U/truth.mrc" -o "$A/relion_aligned.mrc" --try-hand -q
    row "abinit RELION SGD" "$A/relion.time" "FSC 0.5 to truth $(fsc_of "$A/relion_aligned.mrc" "$U/truth.mrc") Å ($(basename "$map"))"
    python3 - "$A/relion.time" "$A/cryoforge.time" <<'PY' | tee -a "$RES"
import sys
def wall(p):
    for l in open(p):
        if "Elapsed (wall clock)" in l:
            t = l.split(": ")[1].strip().split(":")
            s = 0.0
            for x in t:
                s = s * 60 + float(x)
            return s
r, c = wall(sys.argv[1]), wall(sys.argv[2])
print(f"   abinit: cryoforge {r / c:.1f}x faster (wall)")
PY
fi

if [[ -z "$ONLY" || "$ONLY" == class2d ]]; then
    C=$OUT/class2d
    rm -rf "$C" && mkdir -p "$C/relion"
    python3 - data/demo/adk_closed.pdb "$C/two.pdb" <<'PY'
import sys
lines = [l for l in open(sys.argv[1]) if l.startswith(("ATOM", "HETATM"))]
P = [[float(l[30 + 8 * i:38 + 8 * i]) for i in range(3)] for l in lines]
c = [sum(p[k] for p in P) / len(P) for k in range(3)]
def block(offs):
    out = []
    for j, o in enumerate(offs):
        for l, p in zip(lines, P):
            v = [p[k] - c[k] for k in range(3)]
            if j % 2:
                v = [v[0], -v[2], v[1]]
            out.append("%s%8.3f%8.3f%8.3f%s" % (l[:30], v[0] + o[0], v[1] + o[1], v[2] + o[2], l[54:]))
    return "".join(out)
open(sys.argv[2], "w").write("MODEL        1\n" + block([[0, 0, 0]]) + "ENDMDL\nMODEL        2\n"
                             + block([[-19, 0, 0], [19, 0, 0]]) + "ENDMDL\nEND\n")
PY
    "$CF" simulate --models "$C/two.pdb" --n 10000 --box 64 --apix 2.5 --snr 0.05 --shift-a 5 \
        --junk 0.3 --seed 31 --out "$C/sim" -q
    (OUT=$C; bench_timed cryoforge "$CF" class2d "$C/sim/particles.star" --classes 20 --out "$C/cf")
    (cd "$C/sim" && OUT=$C && bench_timed relion relion_refine --i particles.star --o "$C/relion/run" \
        --dont_combine_weights_via_disc --pool 3 --pad 2 --ctf --iter 25 --tau2_fudge 2 \
        --particle_diameter 120 --K 20 --flatten_solvent --zero_mask --oversampling 1 \
        --psi_step 10 --offset_range 5 --offset_step 2 --norm --scale --j 2)
    score() {
        python3 - "$C/sim/truth.csv" "$1" <<'PY'
import collections, sys
t = [l.strip().split(",") for l in open(sys.argv[1]).readlines()[1:]]
lab = [(x[10] if x[10] != "none" else "m" + x[1]) for x in t]
txt = open(sys.argv[2]).read().splitlines()
labels, rows = [], []
for l in txt:
    if l.startswith("loop_"):
        labels = []
    elif l.startswith("_rln"):
        labels.append(l.split()[0])
    elif "@" in l:
        rows.append(l.split())
ci, ii = labels.index("_rlnClassNumber"), labels.index("_rlnImageName")
per = collections.defaultdict(collections.Counter)
for r in rows:
    i = int(r[ii].split("@")[0]) - 1
    per[int(r[ci])][lab[i]] += 1
junk_in = junk = pure = good = 0
for cnt in per.values():
    j = sum(v for k, v in cnt.items() if not k.startswith("m"))
    g = sum(cnt.values()) - j
    junk += j
    good += g
    if j > g:
        junk_in += j
    else:
        pure += max(cnt["m0"], cnt["m1"])
print(f"junk in junk classes {junk_in / junk:.3f}, purity {pure / good:.3f}")
PY
    }
    row "class2d cryoforge" "$C/cryoforge.time" "$(score "$C/cf/particles.star")"
    row "class2d RELION" "$C/relion.time" "$(score "$C/relion/run_it025_data.star")"
fi

if [[ "${CRYODRGN_ABINIT:-0}" == 1 ]]; then
    bench_python cryodrgn cryodrgn
    A=$OUT/abinit
    (OUT=$A; bench_timed cryodrgn "$PY" -m cryodrgn.commands.abinit_homo "$U/sim/particles.mrcs" \
        --ctf "$U/sim/ctf.pkl" -o "$A/cryodrgn" --num-epochs 5)
    row "abinit cryoDRGN abinit_homo" "$A/cryodrgn.time" "see $A/cryodrgn"
fi
