#!/usr/bin/env bash
# Ab initio benchmark (issue: abinit / align-maps): on the uniform set of
# bench/refine_vs_relion.sh (8-AdK assembly, 163 Å, 10,000 particles of 64 px, SNR 0.05):
#   1. `cryoforge abinit` with defaults from a random start;
#   2. `align-maps --try-hand` of the class map onto the truth, FSC to truth;
#   3. `cryoforge refine` started from the ab initio map (defaults), its map aligned onto the
#      truth (either hand) and compared with the refinement started from the 30 Å low-pass of
#      the truth (bench/out/refine/uniform/cf, made by refine_vs_relion.sh).
# Also a two-class run on a 50/50 mixture of the 8-copy and a 4-copy assembly (5,000 each):
# the fraction of particles in the right class.
#   bash bench/abinit_bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_time
bench_cryoforge
BASE=$ROOT/bench/out/refine
U=$BASE/uniform
[[ -f $U/sim/particles.star && -f $U/truth.mrc ]] || { echo "run SETS=uniform SKIP_RELION=1 bash bench/refine_vs_relion.sh first" >&2; exit 1; }
OUT=$ROOT/bench/out/abinit
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
fsc_of() {
    "$CF" fsc "$1" "$2" --json -q | python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.2f %.2f" % (d["resolution_0.5_A"], d["resolution_0.143_A"]))'
}
rm -rf "$OUT/ab" "$OUT/ref"
bench_timed abinit "$CF" abinit "$U/sim/particles.star" --out "$OUT/ab"
"$CF" align-maps "$OUT/ab/class_001.mrc" "$U/truth.mrc" -o "$OUT/ab_aligned.mrc" --try-hand -q
echo "   ab initio map aligned onto the truth: FSC (0.5, 0.143) $(fsc_of "$OUT/ab_aligned.mrc" "$U/truth.mrc") Å; hand flipped: $(python3 -c 'import json; print(json.load(open("'"$OUT"'/ab_aligned.json"))["hand_flipped"])')"
bench_timed refine_from_abinit "$CF" refine "$U/sim/particles.star" --reference "$OUT/ab/class_001.mrc" --out "$OUT/ref"
"$CF" align-maps "$OUT/ref/map.mrc" "$U/truth.mrc" -o "$OUT/ref_aligned.mrc" --try-hand -q
echo "   refine from ab initio, aligned: FSC (0.5, 0.143) $(fsc_of "$OUT/ref_aligned.mrc" "$U/truth.mrc") Å"
[[ -f $U/cf/map.mrc ]] && echo "   refine from the 30 Å low-pass:  FSC (0.5, 0.143) $(fsc_of "$U/cf/map.mrc" "$U/truth.mrc") Å"

# Two classes: 8-copy and 4-copy assemblies, 5,000 particles each, interleaved.
M=$OUT/mix
rm -rf "$M" && mkdir -p "$M"
python3 bench/make_assembly.py data/demo/adk_closed.pdb 4 "$M/a4.pdb" 11 >/dev/null
"$CF" simulate --model "$BASE/assembly.pdb" --n 5000 --box 64 --apix 3.2 --snr 0.05 --shift-a 6 --defocus-a 10000,25000 --seed 21 --out "$M/s8" -q
"$CF" simulate --model "$M/a4.pdb" --n 5000 --box 64 --apix 3.2 --snr 0.05 --shift-a 6 --defocus-a 10000,25000 --seed 22 --out "$M/s4" -q
python3 bench/merge_star.py "$M/mix.star" "$M/s8/particles.star" "$M/s4/particles.star"
bench_timed abinit2 "$CF" abinit "$M/mix.star" --classes 2 --out "$M/ab"
python3 - "$M/ab/particles.star" <<'PY'
import sys, collections
rows = [l.split() for l in open(sys.argv[1]) if "particles.mrcs" in l]
names = [l.split()[0] for l in open(sys.argv[1]) if l.startswith("_rln")]
# The particle table's labels follow the optics table's.
pt = names[names.index("_rlnImageName"):]
k = pt.index("_rlnClassNumber")
c = collections.Counter(("s8" if "s8/" in r[0] else "s4", r[k]) for r in rows)
best = max(c[("s8", "1")] + c[("s4", "2")], c[("s8", "2")] + c[("s4", "1")])
print(f"   two classes: {dict(c)}; right class {best / len(rows):.4f}")
PY
