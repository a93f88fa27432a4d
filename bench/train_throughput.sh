#!/usr/bin/env bash
# Training throughput (particles/s of optimiser steps, reference-init warm-up excluded) of
# `star train` and `sphere train` (issues #6, #7; BENCHMARKS.md §3–4):
#   - AdK (214 residues), 64 px at 1.5 Å/px: cryoSTAR (batch 64, 10 Å band) and cryoSPHERE
#     (batch 128, full band) with N_segm 4 and 20;
#   - a 10,058-residue complex (47 AdK chains, bench/make_complex.py), 128 px at 2 Å/px:
#     cryoSPHERE with 2 segments per chain (94 in all), batch 32 (the [B, R, S] membership
#     tensors are 128 MiB each at this size), the light clash list (weight 0.1); cryoSTAR.
#
#   bash bench/train_throughput.sh            # THREADS=2 STEPS=40 by default
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
THREADS=${THREADS:-2}
STEPS=${STEPS:-40}
ensure_time
bench_cryoforge
OUT=$ROOT/bench/out/throughput
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
W=$OUT/work
rm -rf "$W" && mkdir -p "$W"
"$CF" -q simulate --model data/demo/adk_closed.pdb --density ca --n 5120 --box 64 --apix 1.5 --snr 0.1 \
    --seed 1 --out "$W/adk"
python3 bench/make_complex.py data/demo/adk_closed.pdb 47 "$W/complex.pdb"
"$CF" -q simulate --model "$W/complex.pdb" --density ca --n 1024 --box 128 --apix 2 --snr 0.1 \
    --seed 1 --out "$W/cx"
rate() { python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['images_per_s'], 1))" "$1"; }
row() { echo "| $1 | $2 | $3 | $(rate "$4/train_summary.json") |" | tee -a "$OUT/table.md"; }
: >"$OUT/table.md"
T="--threads $THREADS -q"
bench_timed star_adk "$CF" $T star train "$W/adk/particles.star" --reference "$W/adk/model.pdb" --steps "$STEPS" \
    --out "$W/star_adk"
row cryoSTAR "AdK 214" "batch 64, 10 Å band" "$W/star_adk"
for n in 4 20; do
    bench_timed "sphere_adk_$n" "$CF" $T sphere train "$W/adk/particles.star" --reference "$W/adk/model.pdb" \
        --n-segm "$n" --steps "$STEPS" --out "$W/sphere_adk_$n"
    row cryoSPHERE "AdK 214" "batch 128, N_segm $n" "$W/sphere_adk_$n"
done
CS=$(( (STEPS + 3) / 4 ))
bench_timed sphere_cx "$CF" $T sphere train "$W/cx/particles.star" --reference "$W/cx/model.pdb" \
    --n-segm 2 --batch-size 32 --clash 0.1 --clash-mode light --steps "$CS" --out "$W/sphere_cx"
row cryoSPHERE "complex 10,058" "batch 32, 2 segments × 47 chains, light clash list" "$W/sphere_cx"
bench_timed sphere_cx_lp "$CF" $T sphere train "$W/cx/particles.star" --reference "$W/cx/model.pdb" \
    --n-segm 2 --batch-size 32 --clash 0.1 --clash-mode light --lowpass 10 --steps "$CS" --out "$W/sphere_cx_lp"
row cryoSPHERE "complex 10,058" "as above, --lowpass 10 (Å)" "$W/sphere_cx_lp"
bench_timed star_cx "$CF" $T star train "$W/cx/particles.star" --reference "$W/cx/model.pdb" --steps "$CS" \
    --out "$W/star_cx"
row cryoSTAR "complex 10,058" "batch 64, 10 Å band" "$W/star_cx"
echo
echo "| method | residues | setting | particles/s |"
echo "|---|---|---|---:|"
cat "$OUT/table.md"
