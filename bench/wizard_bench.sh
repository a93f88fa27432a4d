#!/usr/bin/env bash
# CryoWizard benchmark (issue: wizard). Two simulated sets of the 8-copy AdK assembly
# (64 px, 3.2 Å/px, SNR 0.05, CTF), N particles each (default 6000; N=20000 for the
# issue's size):
#   po:    30 % junk (all four kinds) and preferred orientation (60 % within 30° of z)
#   clean: uniform poses, no junk
#   strongpo: 30 % junk and 90 % of the particles within 20° of z (the gate fails)
# On each: `cryoforge wizard` with defaults (no --weights unless WEIGHTS=file is given:
# consensus scoring), then, from the same start volume the wizard's search used,
#   all:    `refine` of every particle
#   random: `refine` of a random subset of the wizard's final size
# Every map is docked onto the true map with `align-maps --try-hand` and compared with
# `fsc` (FSC-to-truth at 0.5 and 0.143). Wall time of every wizard step from wizard.json.
#   usage: bash bench/wizard_bench.sh            (N=6000 ONLY=po|clean|strongpo|all WEIGHTS=w.safetensors)
source "$(dirname "$0")/lib.sh"
bench_cryoforge
ensure_time
N=${N:-6000}
echo "== machine: $(machine_info)"
BASE=$ROOT/bench/out/wizard
mkdir -p "$BASE"
ASM=$BASE/assembly.pdb
python3 bench/make_assembly.py data/demo/adk_closed.pdb 8 "$ASM" 7 >/dev/null

fsc_truth() {
    "$CF" align-maps "$1" "$2" -o "$1.aligned.mrc" --try-hand -q >/dev/null
    "$CF" fsc "$1.aligned.mrc" "$2" --json -q 2>/dev/null |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.2f %.2f" % (d["resolution_0.5_A"], d["resolution_0.143_A"]))'
}

run_set() {
    local tag=$1 seed=$2
    shift 2
    OUT=$BASE/$tag
    mkdir -p "$OUT"
    local sim=$OUT/sim
    echo
    echo "######## $tag: $N particles ($*)"
    rm -rf "$sim" "$OUT/wiz" "$OUT/all" "$OUT/random"
    "$CF" simulate --model "$ASM" --n "$N" --box 64 --apix 3.2 --snr 0.05 --shift-a 6 --defocus-a 10000,25000 \
        --seed "$seed" "$@" --out "$sim" -q
    "$CF" pdb2map "$sim/model.pdb" --no-center --box 64 --apix 3.2 -o "$OUT/truth.mrc" -q
    local w=()
    [[ -n "${WEIGHTS:-}" ]] && w=(--weights "$WEIGHTS")
    bench_timed "$tag.wizard" "$CF" wizard "$sim/particles.star" "${w[@]}" --out "$OUT/wiz"
    python3 - "$OUT/wiz/wizard.json" "$sim/truth.csv" "$OUT/random_ind.txt" <<'PY'
import csv, json, random, sys
st = json.load(open(sys.argv[1]))
print("   wizard steps (wall s):")
for s in st["steps"]:
    print(f"     {s['name']:<28} {s['seconds']:8.1f}  {s['status']}")
print(f"   total {st['seconds']:.0f} s; gate: {st['gate']['reason']}")
if st.get("branch"):
    print(f"   branch: {st['branch']['reason']}")
f = st["final"]
print(f"   final: {f['particles']} particles, {f['resolution_a']:.2f} Å (half maps), cFAR {f['cfar']:.3f}; {f['reason']}")
truth = list(csv.DictReader(open(sys.argv[2])))
junk = [r["junk"] not in ("", "none") for r in truth]
# Junk in the final subset (final_particles.star keeps the input order of the top-scored).
sc = [float(r["score"]) for r in csv.DictReader(open(sys.argv[1].replace("wizard.json", "scores.csv")))]
top = sorted(range(len(sc)), key=lambda i: (-sc[i], i))[: f["particles"]]
print(f"   junk: {sum(junk)} of {len(junk)} in the input, {sum(junk[i] for i in top)} of {len(top)} in the final subset")
pos = [s for s, j in zip(sc, junk) if not j]; neg = [s for s, j in zip(sc, junk) if j]
if pos and neg:
    import bisect
    ns = sorted(neg)
    auc = sum(bisect.bisect_left(ns, p) + 0.5 * (bisect.bisect_right(ns, p) - bisect.bisect_left(ns, p)) for p in pos) / len(pos) / len(neg)
    print(f"   score ROC AUC good vs junk: {auc:.3f}")
random.seed(1)
idx = sorted(random.sample(range(len(sc)), f["particles"]))
open(sys.argv[3], "w").write("\n".join(map(str, idx)) + "\n")
print(f["start_map"])
PY
    local start
    start=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["final"]["start_map"])' "$OUT/wiz/wizard.json")
    "$CF" select "$sim/particles.star" --ind "$OUT/random_ind.txt" -o "$OUT/random.star" -q
    bench_timed "$tag.all" "$CF" refine "$sim/particles.star" --reference "$OUT/wiz/$start" --ini-high-a 15 --out "$OUT/all"
    bench_timed "$tag.random" "$CF" refine "$OUT/random.star" --reference "$OUT/wiz/$start" --ini-high-a 15 --out "$OUT/random"
    local wz al rn
    wz=$(fsc_truth "$OUT/wiz/final_map.mrc" "$OUT/truth.mrc")
    al=$(fsc_truth "$OUT/all/map.mrc" "$OUT/truth.mrc")
    rn=$(fsc_truth "$OUT/random/map.mrc" "$OUT/truth.mrc")
    echo "   FSC to truth (0.5 / 0.143, Å): wizard $wz | all particles $al | random subset of the same size $rn"
    echo "   wall: wizard $(time_field "$OUT/$tag.wizard.time" wall_s) s, refine all $(time_field "$OUT/$tag.all.time" wall_s) s, refine random $(time_field "$OUT/$tag.random.time" wall_s) s"
}

[[ "${ONLY:-po}" == po || -z "${ONLY:-}" || "${ONLY:-}" == all ]] &&
    run_set po 41 --junk 0.3 --poses preferred --po-fraction 0.6 --po-cone 30
[[ "${ONLY:-}" == clean || "${ONLY:-}" == all ]] && run_set clean 42
# Strong preferred orientation: the gate fails and the branch runs.
[[ "${ONLY:-}" == strongpo || "${ONLY:-}" == all ]] &&
    run_set strongpo 43 --junk 0.3 --poses preferred --po-fraction 0.9 --po-cone 20
exit 0
