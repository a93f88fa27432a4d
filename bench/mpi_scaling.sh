#!/usr/bin/env bash
# 1 and 2 MPI ranks on this machine (issue #20; BENCHMARKS.md §10), same data, one run:
#   - reconstruct: 20,000 particles, 64 px (simulate, AdK, SNR 0.1);
#   - refine: 2,000 of them, 64 px, global search at healpix order 1, then local;
#   - star train: 60 steps of 64 at 64 px (AdK, 214 residues);
#   - ranker score: the committed tiny ViT fixture over 2,000 particles (the shape of the
#     work, not the speed of ViT-B).
# Each configuration: 1 rank × 1 thread, 1 rank × 2 threads, 2 ranks × 1 thread (both cores).
# Bytes communicated per step are printed from the sizes of what is reduced.
#   bash bench/mpi_scaling.sh       # needs a --features mpi build (made here if absent)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_time
if [[ -z "${CRYOFORGE_BIN:-}" ]]; then
    echo "== building cryoforge with MPI (cargo build --release --features mpi)" >&2
    cargo build --release --features mpi >&2
fi
bench_cryoforge
OUT=$ROOT/bench/out/mpi_scaling
mkdir -p "$OUT"
W=$OUT/work
rm -rf "$W" && mkdir -p "$W"
echo "== machine: $(machine_info)"
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"
"$CF" -q simulate --model data/demo/adk_closed.pdb --n 20000 --box 64 --apix 2 --snr 0.1 --shift-a 4 \
    --seed 1 --out "$W/sim"
"$CF" -q select "$W/sim/particles.star" --first 2000 -o "$W/sim/first2000.star"
"$CF" -q pdb2map "$W/sim/model.pdb" --no-center --box 64 --apix 2 -o "$W/truth.mrc"
: >"$OUT/table.md"
run3() { # label, command args...
    local label=$1
    shift
    bench_timed "${label}_1x1" $MPI -n 1 "$CF" --threads 1 -q "$@" --out "$W/${label}_1x1"
    bench_timed "${label}_1x2" $MPI -n 1 "$CF" --threads 2 -q "$@" --out "$W/${label}_1x2"
    bench_timed "${label}_2x1" $MPI -n 2 "$CF" --threads 1 -q "$@" --out "$W/${label}_2x1"
    local a b c
    a=$(time_field "$OUT/${label}_1x1.time" wall_s)
    b=$(time_field "$OUT/${label}_1x2.time" wall_s)
    c=$(time_field "$OUT/${label}_2x1.time" wall_s)
    echo "| $label | $a | $b | $c | $(python3 -c "print(f'{$a/$c:.2f}× / {$b/$c:.2f}×')") |" | tee -a "$OUT/table.md"
}
run3 reconstruct reconstruct "$W/sim/particles.star"
run3 refine refine "$W/sim/first2000.star" --reference "$W/truth.mrc" --healpix-order 1 --max-iter 6
run3 star_train star train "$W/sim/particles.star" --reference "$W/sim/model.pdb" --steps 60 --batch-size 64 --seed 1
W8=crates/ief/tests/fixtures/tiny_vit/weights.safetensors
run3 ranker ranker score "$W/sim/first2000.star" --weights "$W8" --heads 4 --batch-size 32
echo "== equality of the results (1 rank vs 2 ranks)"
"$CF" fsc "$W/reconstruct_1x1/map.mrc" "$W/reconstruct_2x1/map.mrc" | tail -1
"$CF" fsc "$W/refine_1x1/map.mrc" "$W/refine_2x1/map.mrc" | tail -1
cmp "$W/ranker_1x1/scores.csv" "$W/ranker_2x1/scores.csv" && echo "ranker scores identical"
tail -1 "$W/star_train_1x1/metrics.csv"
tail -1 "$W/star_train_2x1/metrics.csv"
echo "== bytes all-reduced"
python3 - "$W/star_train_1x1/weights.safetensors" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
params = sum(eval("*".join(map(str, v["shape"])) or "1") for k, v in h.items() if k != "__metadata__")
print(f"star train: {params} parameters -> {params*4/2**20:.2f} MiB of f32 gradients all-reduced per step")
d = 64; np_ = 2 * d
cells = np_ * np_ * (np_ // 2 + 1)
print(f"reconstruct 64 px, pad 2: 2 half grids x {cells} cells x 12 B = {2*cells*12/2**20:.1f} MiB all-reduced once")
PY
echo "== table: | what | 1 rank x 1 thread (s) | 1 rank x 2 threads (s) | 2 ranks x 1 thread (s) | speed-up of 2 ranks vs 1x1 / 1x2 |"
cat "$OUT/table.md"
