#!/usr/bin/env bash
# Continue an interrupted RELION run of bench/refine_vs_relion.sh (RELION 3.1.3 needs hours per
# set on 2 cores, longer than one working session): each call resumes from the last completed
# iteration with `relion_refine_mpi --continue run_itNNN_optimiser.star` and times the segment
# into $OUT/TAG.relion.segK.time. When RELION has converged (run_data.star exists) it scores the
# result as the main script does and sums wall and CPU time over all segments; a segment cut
# off mid-iteration loses that iteration, which is not counted (so RELION's total is a lower
# bound). Segments without a /usr/bin/time record (an interrupted first run, or a segment killed
# with its session) are timed from the modification times of the iteration files and listed as
# "mtime WALL_S CPU_S" lines in $OUT/TAG.relion.segments.
#
#   SETS=uniform nice -n 19 bash bench/relion_continue.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SETS=${SETS:-"uniform po"}
ensure_time
bench_cryoforge
BASE=$ROOT/bench/out/refine

for tag in $SETS; do
    OUT=$BASE/$tag
    sim=$OUT/sim
    [[ -d "$OUT/relion" ]] || { echo "$OUT/relion missing: run bench/refine_vs_relion.sh first" >&2; exit 1; }
    if [[ ! -f "$OUT/relion/run_data.star" ]]; then
        last=$(ls "$OUT"/relion/run_it*_optimiser.star 2>/dev/null | sort | tail -1)
        [[ -n "$last" ]] || { echo "no completed RELION iteration in $OUT/relion" >&2; exit 1; }
        k=$(find "$OUT" -maxdepth 1 -name "$tag.relion.seg*.log" | wc -l)
        k=$((k + 1))
        echo "== $tag: continuing RELION from $(basename "$last") (segment $k)"
        echo "segment $k: continue from $(basename "$last") at $(date -u '+%F %T')" >>"$OUT/$tag.relion.segments"
        (cd "$sim" && bench_timed "$tag.relion.seg$k" mpirun --allow-run-as-root --oversubscribe -n 3 \
            relion_refine_mpi --continue "$last" --o "$OUT/relion/run" --dont_combine_weights_via_disc \
            --pool 30 --j 1)
    fi
    wall=0
    cpu=0
    rss=0
    for f in "$OUT"/$tag.relion.seg*.time; do
        # A segment killed with its session leaves an empty record: it is counted from an
        # "mtime" line instead (below).
        [[ -s "$f" ]] && grep -q "Elapsed (wall clock)" "$f" || continue
        wall=$(python3 -c "print($wall + $(time_field "$f" wall_s))")
        cpu=$(python3 -c "print($cpu + $(time_field "$f" cpu_s))")
        rss=$(python3 -c "print(max($rss, $(time_field "$f" rss_mib)))")
    done
    # Segments timed from file mtimes: "mtime W C" lines (wall s, CPU s estimated as 2 × wall).
    if [[ -f "$OUT/$tag.relion.segments" ]]; then
        while read -r kind w c; do
            [[ "$kind" == mtime ]] || continue
            wall=$(python3 -c "print($wall + $w)")
            cpu=$(python3 -c "print($cpu + $c)")
        done <"$OUT/$tag.relion.segments"
    fi
    score=$(python3 bench/refine_score.py "$OUT/relion/run_data.star" "$sim/particles.star")
    fsc=$("$CF" fsc "$OUT/relion/run_class001.mrc" "$OUT/truth.mrc" --json -q |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.2f %.2f" % (d["resolution_0.5_A"], d["resolution_0.143_A"]))')
    cfw=$(time_field "$OUT/$tag.cryoforge.time" wall_s)
    cfc=$(time_field "$OUT/$tag.cryoforge.time" cpu_s)
    echo "$tag | RELION (segments summed) | $wall | $cpu | $rss | $score | $fsc |" | tee -a "$BASE/results.txt"
    python3 -c "print(f'   speed: cryoforge {$wall/$cfw:.1f}x faster (wall), {$cpu/$cfc:.1f}x (CPU)')" | tee -a "$BASE/results.txt"
done
