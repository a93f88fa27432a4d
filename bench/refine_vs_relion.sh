#!/usr/bin/env bash
# Peer benchmark: RELION 3.1.3 3D auto-refine (Debian's `relion` package) against
# `cryoforge refine` on the same simulated particles, in one run on the same machine.
#
# Data (bench/make_assembly.py): eight AdK copies in an asymmetric assembly, ≈ 165 Å across;
# `cryoforge simulate`: 10,000 particles, 64 px at 3.2 Å/px (205 Å box), CTF with defocus
# 1–2.5 µm, shifts up to ±6 Å, SNR 0.05; reference: the true map (`pdb2map`), which both
# programs low-pass to 30 Å themselves.
#   uniform: Haar-uniform poses
#   po     : 80 % of views within 30° of the z axis, the rest uniform
#
# RELION (settings as close as the programs allow):
#   mpirun -n 3 relion_refine_mpi --auto_refine --split_random_halves --j 1
#   (RELION needs ≥ 3 MPI processes to split half sets: one master, which does no
#   expectation, and one worker per half set — two busy processes on the two cores)
#   --ini_high 30 --healpix_order 2 --auto_local_healpix_order 4 --offset_range 5
#   --offset_step 1 --sym C1 --low_resol_join_halves 40 --pad 2 --particle_diameter 190
#   --ctf --flatten_solvent --zero_mask --firstiter_cc --norm --scale
# cryoforge: defaults (`cryoforge refine PARTICLES --reference MAP --out DIR`), all cores.
#
# Reports for each: wall time, CPU time, peak RSS (/usr/bin/time -v), the pose errors against
# the truth (bench/refine_score.py: median and 90th-percentile geodesic error, fraction > 30°,
# median shift error), FSC to the truth map (`cryoforge fsc`, unmasked, 0.5 and 0.143), the
# same for a reconstruction with the true poses, and the speed ratio.
#
#   bash bench/refine_vs_relion.sh                 # both sets
#   SETS=uniform bash bench/refine_vs_relion.sh    # one set
#   N=2000 bash bench/refine_vs_relion.sh          # smaller sets (quick check)
#   SKIP_RELION=1 bash bench/refine_vs_relion.sh   # cryoforge only
# RELION is installed with `apt-get install -y relion` when missing (Debian package 3.1.3).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SETS=${SETS:-"uniform po"}
N=${N:-10000}
ensure_time
bench_cryoforge
if [[ "${SKIP_RELION:-0}" != 1 ]] && ! command -v relion_refine_mpi >/dev/null; then
    echo "== installing RELION (apt-get install -y relion openmpi-bin)" >&2
    apt-get install -y relion openmpi-bin >&2
fi
echo "== machine: $(machine_info)"
[[ "${SKIP_RELION:-0}" == 1 ]] || echo "== $(relion_refine --version 2>&1 | head -1)"

BASE=$ROOT/bench/out/refine
mkdir -p "$BASE"
ASM=$BASE/assembly.pdb
python3 bench/make_assembly.py data/demo/adk_closed.pdb 8 "$ASM" 7 >/dev/null

fsc_of() {
    "$CF" fsc "$1" "$2" --json -q 2>/dev/null |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.2f %.2f" % (d["resolution_0.5_A"], d["resolution_0.143_A"]))'
}

run_set() {
    local tag=$1 seed=$2
    shift 2
    OUT=$BASE/$tag
    local sim=$OUT/sim
    mkdir -p "$OUT"
    echo
    echo "######## $tag: $N particles, 64 px, 3.2 Å/px, SNR 0.05 ($*)"
    rm -rf "$sim"
    "$CF" simulate --model "$ASM" --n "$N" --box 64 --apix 3.2 --snr 0.05 --shift-a 6 --defocus-a 10000,25000 \
        --seed "$seed" "$@" --out "$sim" -q
    "$CF" pdb2map "$sim/model.pdb" --no-center --box 64 --apix 3.2 -o "$OUT/truth.mrc" -q
    "$CF" reconstruct "$sim/particles.star" --out "$OUT/true_poses" -q
    read -r tp05 tp0143 < <(fsc_of "$OUT/true_poses/map.mrc" "$OUT/truth.mrc")
    echo "   true poses: FSC to truth 0.5 at $tp05 Å, 0.143 at $tp0143 Å"

    rm -rf "$OUT/cf"
    bench_timed "$tag.cryoforge" "$CF" refine "$sim/particles.star" --reference "$OUT/truth.mrc" --out "$OUT/cf"
    local cf_score cf_fsc
    cf_score=$(python3 bench/refine_score.py "$OUT/cf/particles.star" "$sim/particles.star")
    cf_fsc=$(fsc_of "$OUT/cf/map.mrc" "$OUT/truth.mrc")
    python3 bench/refine_check.py "$OUT/cf/fsc.csv" "$OUT/cf/map.mrc" "$OUT/truth.mrc" "$CF" >"$OUT/cf_halfmap_check.txt"
    echo "   cryoforge: $cf_score; FSC to truth (0.5, 0.143) $cf_fsc Å; $(cat "$OUT/cf_halfmap_check.txt")"

    local rl_score="-" rl_fsc="- -" rl_wall="-" rl_cpu="-" rl_rss="-"
    if [[ "${SKIP_RELION:-0}" != 1 ]]; then
        rm -rf "$OUT/relion"
        mkdir -p "$OUT/relion"
        # RELION resolves image names against the working directory.
        (cd "$sim" && bench_timed "$tag.relion" mpirun --allow-run-as-root --oversubscribe -n 3 relion_refine_mpi \
            --i particles.star --o "$OUT/relion/run" --ref "$OUT/truth.mrc" --ini_high 30 --particle_diameter 190 \
            --auto_refine --split_random_halves --sym C1 --healpix_order 2 --auto_local_healpix_order 4 \
            --offset_range 5 --offset_step 1 --low_resol_join_halves 40 --pad 2 --ctf --flatten_solvent --zero_mask \
            --firstiter_cc --norm --scale --dont_combine_weights_via_disc --pool 30 --j 1 --random_seed 0)
        rl_score=$(python3 bench/refine_score.py "$OUT/relion/run_data.star" "$sim/particles.star")
        rl_fsc=$(fsc_of "$OUT/relion/run_class001.mrc" "$OUT/truth.mrc")
        rl_wall=$(time_field "$OUT/$tag.relion.time" wall_s)
        rl_cpu=$(time_field "$OUT/$tag.relion.time" cpu_s)
        rl_rss=$(time_field "$OUT/$tag.relion.time" rss_mib)
        echo "   RELION: $rl_score; FSC to truth (0.5, 0.143) $rl_fsc Å"
    fi
    local cf_wall cf_cpu
    cf_wall=$(time_field "$OUT/$tag.cryoforge.time" wall_s)
    cf_cpu=$(time_field "$OUT/$tag.cryoforge.time" cpu_s)
    {
        echo "$tag | cryoforge | $cf_wall | $cf_cpu | $(time_field "$OUT/$tag.cryoforge.time" rss_mib) | $cf_score | $cf_fsc | true poses $tp05 $tp0143"
        echo "$tag | RELION | $rl_wall | $rl_cpu | $rl_rss | $rl_score | $rl_fsc |"
    } | tee -a "$BASE/results.txt"
    if [[ "$rl_wall" != "-" ]]; then
        python3 -c "print(f'   speed: cryoforge {float($rl_wall)/float($cf_wall):.1f}x faster (wall), {float($rl_cpu)/float($cf_cpu):.1f}x (CPU)')"
    fi
}

echo "# $(date -u '+%F %T') N=$N $(machine_info)" >>"$BASE/results.txt"
for s in $SETS; do
    case $s in
        uniform) run_set uniform 2 ;;
        po) run_set po 3 --poses preferred --po-fraction 0.8 --po-cone 30 ;;
        *) echo "unknown set $s" >&2; exit 1 ;;
    esac
done
