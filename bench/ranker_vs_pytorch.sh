#!/usr/bin/env bash
# CryoRanker scoring speed: ViT-B/14 at 224 px (random weights with the published names, from
# bench/ief_torch.py) in cryoforge (`ranker score`, preprocessing included: 128 px particles
# spline-upsampled to 224) and in PyTorch (model forward only, same batch, all cores), one run.
#   bash bench/ranker_vs_pytorch.sh            (N=256 particles, BATCH=32)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N=${N:-256}; BATCH=${BATCH:-32}
ensure_time
bench_cryoforge
bench_python torch torch safetensors numpy scipy
OUT=$ROOT/bench/out/ranker
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
[[ -f $OUT/base/weights.safetensors ]] || { mkdir -p "$OUT/base" && "$PY" bench/ief_torch.py base "$OUT/base"; }
"$CF" -q simulate --model data/demo/adk_closed.pdb --n "$N" --box 128 --apix 1.5 --snr 0.1 --seed 5 --out "$OUT/sim"
bench_timed cryoforge "$CF" -q ranker score "$OUT/sim/particles.star" --weights "$OUT/base/weights.safetensors" \
    --out "$OUT/cf" --batch-size "$BATCH"
cf=$(python3 -c "import json; print(json.load(open('$OUT/cf/summary.json'))['particles_per_s'])")
pt=$("$PY" bench/ief_torch.py time "$OUT/base/weights.safetensors" "$N" "$BATCH" | tee /dev/stderr | sed -E 's/.*= ([0-9.]+)\/s/\1/')
echo "| ViT-B/14 224 px, batch $BATCH | cryoforge $(printf %.2f "$cf")/s (peak RSS $(time_field "$OUT/cryoforge.time" rss_mib) MiB) | PyTorch $pt/s | ratio $(python3 -c "print(f'{$cf/$pt:.2f}')") |"
