#!/usr/bin/env bash
# cryoPROS on a preferred-orientation set: plain `refine` vs `pros run` after it.
# Data: bench/make_assembly.py (8 AdK copies, ≈ 165 Å, no symmetry), `simulate` 64 px at
# 3.2 Å/px, SNR 0.015, CTF, 95 % of the views within 20° of z (PO_FRACTION, PO_CONE), the rest
# uniform: there plain refine misassigns ≈ 20 % of the particles by more than 30°.
# 1. `refine` from the truth map (it starts from its 30 Å low-pass): the consensus poses.
# 2. `pros run` on those particles and that map (--truth reports the raw particles' pose
#    errors before and after every iteration).
# Prints the fraction of particles misassigned by > 30° and the FSC-to-truth resolution.
#   N=10000 ITER=2 bash bench/pros_po.sh          (defaults: N=4000, ITER=1, preset cpu)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N=${N:-4000}; ITER=${ITER:-1}; PO_FRACTION=${PO_FRACTION:-0.95}; PO_CONE=${PO_CONE:-20}; SNR=${SNR:-0.015}
PRESET=${PRESET:-cpu}; STEPS=${STEPS:-}
bench_cryoforge
OUT=$ROOT/bench/out/pros_po
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
python3 bench/make_assembly.py data/demo/adk_closed.pdb 8 "$OUT/assembly.pdb" 7 >/dev/null
"$CF" -q simulate --model "$OUT/assembly.pdb" --n "$N" --box 64 --apix 3.2 --snr "$SNR" --shift-a 6 \
    --defocus-a 10000,25000 --poses preferred --po-fraction "$PO_FRACTION" --po-cone "$PO_CONE" --seed 11 --out "$OUT/sim"
"$CF" -q pdb2map "$OUT/sim/model.pdb" --no-center --box 64 --apix 3.2 -o "$OUT/truth.mrc"
fsc_to_truth() { "$CF" fsc "$1" "$OUT/truth.mrc" --json -q | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % d["resolution_0.5_A"])'; }
rm -rf "$OUT/refine"
bench_timed refine "$CF" refine "$OUT/sim/particles.star" --reference "$OUT/truth.mrc" --out "$OUT/refine" \
    --truth "$OUT/sim/particles.star"
python3 - "$OUT/refine/iterations.jsonl" <<'PY'
import json, sys
d = [json.loads(l) for l in open(sys.argv[1])][-1]
print(f"plain refine: median pose error {d['truth_median_angle_deg']:.2f}°, "
      f"{100 * d['truth_fraction_over_30deg']:.1f} % over 30°, {d['resolution_0143_a']:.2f} Å (half maps, 0.143)")
PY
echo "plain refine: FSC to truth 0.5 at $(fsc_to_truth "$OUT/refine/map.mrc") Å"
rm -rf "$OUT/pros"
args=(--preset "$PRESET" --iterations "$ITER" --truth "$OUT/sim/particles.star")
[[ -n "$STEPS" ]] && args+=(--steps "$STEPS")
bench_timed pros "$CF" pros run "$OUT/refine/particles.star" --volume "$OUT/refine/map.mrc" --out "$OUT/pros" "${args[@]}"
for s in "$OUT"/pros/iter_*/summary.json; do
    python3 - "$s" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
b, a, g = d["truth_before"], d["truth_after"], d["generated"]
print(f"cryoPROS iteration {d['iteration']}: {100 * b['fraction_over_30deg']:.1f} % → {100 * a['fraction_over_30deg']:.1f} % over 30° "
      f"(median {b['median_angle_deg']:.2f}° → {a['median_angle_deg']:.2f}°), raw-only {d['raw_resolution_0143_a']:.2f} Å (half maps); "
      f"generated: histogram KL {g['histogram_kl']:.3f} (raw vs raw {g['histogram_kl_raw_vs_raw']:.3f}), SNR {g['snr_db_generated']:.2f} dB "
      f"(raw {g['snr_db_raw']:.2f} dB), corr own/other pose {g['corr_own_pose']:.3f}/{g['corr_other_pose']:.3f}; {d['seconds']:.0f} s")
PY
    echo "   raw-only map: FSC to truth 0.5 at $(fsc_to_truth "$(dirname "$s")/raw/raw_only.mrc") Å"
done
