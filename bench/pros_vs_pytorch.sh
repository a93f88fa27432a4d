#!/usr/bin/env bash
# cryoPROS HVAE training step (forward, backward, Adam with clipping) in cryoforge
# (crates/pros/examples/pros_step.rs) and in the same network written in PyTorch
# (bench/pros_torch.py), on the same random batch shape, the same cores, one run.
#   bash bench/pros_vs_pytorch.sh                       (cpu preset at 64 and 128 px, paper preset at 64 px)
#   CASES="paper:256:8" STEPS=2 bash bench/pros_vs_pytorch.sh   (the paper's configuration)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
CASES=${CASES:-"cpu:64:8 cpu:128:8 paper:64:8"}
STEPS=${STEPS:-5}
ensure_time
bench_python torch torch safetensors numpy scipy
echo "== building the cryoforge step example" >&2
cargo build --release -p cryoforge-pros --example pros_step >&2
EX="$ROOT/target/release/examples/pros_step"
OUT=$ROOT/bench/out/pros
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
echo "| preset | box | batch | parameters | cryoforge images/s (peak RSS) | PyTorch images/s (peak RSS) | ratio |"
echo "|---|---|---|---|---|---|---|"
for c in $CASES; do
    IFS=: read -r preset d b <<<"$c"
    PRESET=$preset D=$d BATCH=$b STEPS=$STEPS bench_timed "cf_${preset}_$d" "$EX"
    "$PY" bench/pros_torch.py "$preset" "$d" "$b" "$STEPS" >"$OUT/pt_${preset}_$d.log" 2>&1
    cf=$(sed -nE 's/.*= ([0-9.]+) images\/s.*/\1/p' "$OUT/cf_${preset}_$d.log")
    pt=$(sed -nE 's/.*= ([0-9.]+) images\/s.*/\1/p' "$OUT/pt_${preset}_$d.log")
    pt_rss=$(sed -nE 's/.*peak RSS ([0-9]+) MiB.*/\1/p' "$OUT/pt_${preset}_$d.log")
    np=$(sed -nE 's/.*: ([0-9]+) parameters.*/\1/p' "$OUT/cf_${preset}_$d.log")
    echo "| $preset | $d | $b | $np | $cf ($(time_field "$OUT/cf_${preset}_$d.time" rss_mib) MiB) | $pt ($pt_rss MiB) | $(python3 -c "print(f'{$cf/$pt:.2f}')") |"
done
