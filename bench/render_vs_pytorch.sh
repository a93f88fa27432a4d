#!/usr/bin/env bash
# Peer benchmark (issue #5): the differentiable Cα renderer, forward + backward of one
# training step (render with pose, shift and CTF, correlation loss against the particle
# images, gradient to the coordinates), cryoforge (crates/nn/examples/render_bench.rs)
# against a PyTorch implementation of the reference pipeline (bench/render_torch.py:
# real-space separable Gaussians, FFT, CTF, low-pass after the FFT, inverse FFT, bilinear
# shift and low-pass of the data, masked correlation), in one run on the same cores.
#
#   bash bench/render_vs_pytorch.sh
#   CRYOFORGE_BENCH_PYTHON=/path/to/python-with-torch bash bench/render_vs_pytorch.sh
#   RESIDUES="214 1000" BANDS="10" ITERS=3 bash bench/render_vs_pytorch.sh
#
# Box 128 at 1 Å/px, batch 64 (cryoSTAR's), THREADS threads on both sides (default 2).
# Bands: 10 Å (cryoSTAR's default bandwidth; both sides compute only what the band needs)
# and full (Nyquist). Without CRYOFORGE_BENCH_PYTHON a throwaway venv bench/.venv/torch is
# made with `pip install torch` (CPU wheels) from PyPI.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESIDUES=${RESIDUES:-"214 1000 10000"}
BANDS=${BANDS:-"10 full"}
ITERS=${ITERS:-4}
THREADS=${THREADS:-2}
BATCH=${BATCH:-64}

bench_python torch "torch"
echo "== machine: $(machine_info)"
echo "== building the cryoforge renderer benchmark"
cargo build --release -q -p cryoforge-nn --example render_bench
RB=$ROOT/target/release/examples/render_bench
OUT=$ROOT/bench/out/render
mkdir -p "$OUT"
: >"$OUT/results.jsonl"
for r in $RESIDUES; do
    for band in $BANDS; do
        # Fewer iterations where one step takes long (10,000 residues at full band).
        it=$ITERS
        [[ $r -ge 10000 ]] && it=$(( (ITERS + 1) / 2 ))
        echo "-- $r residues, band $band, batch $BATCH, $it timed steps after a warm-up"
        RAYON_NUM_THREADS=$THREADS "$RB" --residues "$r" --box 128 --apix 1 --batch "$BATCH" --band "$band" \
            --iters "$it" | tee -a "$OUT/results.jsonl"
        "$PY" bench/render_torch.py --residues "$r" --box 128 --apix 1 --batch "$BATCH" --band "$band" \
            --iters "$it" --threads "$THREADS" 2>/dev/null | tee -a "$OUT/results.jsonl"
    done
done
"$PY" - "$OUT/results.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
key = lambda r: (r["residues"], r["band"])
torch = {key(r): r["images_per_s"] for r in rows if r["tool"] == "pytorch"}
print()
print("| residues | band | PyTorch img/s | cryoforge fourier img/s | ratio | cryoforge image img/s | ratio |")
print("|---:|---|---:|---:|---:|---:|---:|")
for k in sorted(torch):
    cf = {r["path"]: r["images_per_s"] for r in rows if r["tool"] == "cryoforge" and key(r) == k}
    t = torch[k]
    print(f"| {k[0]} | {k[1]} | {t:.1f} | {cf['fourier']:.1f} | **{cf['fourier'] / t:.1f}×** | {cf['image']:.1f} | {cf['image'] / t:.1f}× |")
PYEOF
