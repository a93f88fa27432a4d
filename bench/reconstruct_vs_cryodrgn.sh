#!/usr/bin/env bash
# Peer benchmark: `cryodrgn backproject_voxel` (cryoDRGN 4.3.1) against `cryoforge reconstruct` on
# the same simulated AdK particles, in one run on the same machine:
#   rec128: 10,000 particles, 128 px, 1 Å/px, SNR 0.1
#   rec64 :  5,000 particles,  64 px, 2 Å/px, SNR 0.1
# Reports wall time, CPU time and peak RSS of both (/usr/bin/time -v), the speed ratio, and the
# FSC of each full map against the noise-free truth map, shell by shell (bench/fsc.py: the same
# NumPy code for both maps; unmasked as specified, plus a soft-sphere-masked variant, plus the
# cryoforge map times the real-space envelope of cryoDRGN's insertion kernel, "cryoforge×cone":
# see BENCHMARKS.md for why).
#
#   bash bench/reconstruct_vs_cryodrgn.sh
#   CRYOFORGE_BENCH_PYTHON=/path/to/python bash bench/reconstruct_vs_cryodrgn.sh  # python with cryodrgn 4.3.1
#   DATASETS=rec64 bash bench/reconstruct_vs_cryodrgn.sh                         # one data set only
#   DATASETS=clean128 bash bench/reconstruct_vs_cryodrgn.sh  # diagnostic: 2,000 noise-free 128 px particles
#   REUSE_DRGN=1 bash bench/reconstruct_vs_cryodrgn.sh   # keep cryoDRGN's previous map and timing if the
#                                                        # particles did not change (cryoDRGN takes minutes)
#
# The simulated particles are cached under bench/out/<set>/sim and regenerated when the command or
# the cryoforge binary changes. Without CRYOFORGE_BENCH_PYTHON a throwaway venv
# bench/.venv/cryodrgn is made with `pip install cryodrgn==4.3.1` from PyPI (pulls PyTorch).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATASETS=${DATASETS:-"rec128 rec64"}
MODEL=data/demo/adk_closed.pdb

ensure_time
bench_python cryodrgn "cryodrgn==4.3.1"
bench_cryoforge
echo "== machine: $(machine_info)"
"$PY" -c 'import cryodrgn, torch, numpy; print("== cryodrgn", cryodrgn.__version__, "torch", torch.__version__,
    "threads", torch.get_num_threads(), "cuda", torch.cuda.is_available(), "numpy", numpy.__version__)'
CF_SHA=$(sha256sum "$CF" | cut -c1-16)

# `cryodrgn` of that interpreter, whatever its bin/ folder holds (an array: /usr/bin/time runs it).
CRYODRGN=("$PY" -c 'import sys; from cryodrgn.command_line import main_commands; sys.argv[0] = "cryodrgn"; main_commands()')

run_set() {
    local tag=$1 n=$2 box=$3 apix=$4 snr=$5
    OUT=$ROOT/bench/out/$tag
    local sim=$OUT/sim
    mkdir -p "$OUT"
    echo
    echo "######## $tag: $n particles, ${box} px, $apix Å/px, SNR $snr"

    local simcmd=("$CF" simulate --model "$MODEL" --n "$n" --box "$box" --apix "$apix" --snr "$snr" --seed 1 --out "$sim")
    local stamp="${simcmd[*]} # cryoforge $CF_SHA"
    if [[ -f "$sim/particles.mrcs" && -f "$OUT/sim.stamp" && "$(cat "$OUT/sim.stamp")" == "$stamp" ]]; then
        echo "== reusing $sim (same command and binary)"
    else
        rm -rf "$sim" "$OUT/drgn" "$OUT/drgn.time" "$OUT/sim.stamp"
        echo "   \$ ${simcmd[*]}"
        "${simcmd[@]}" -q
        echo "$stamp" >"$OUT/sim.stamp"
    fi
    "$CF" pdb2map "$sim/model.pdb" --no-center --box "$box" --apix "$apix" -o "$OUT/truth.mrc" -q

    if [[ "${REUSE_DRGN:-0}" == 1 && -f "$OUT/drgn/backproject.mrc" && -f "$OUT/drgn.time" ]]; then
        echo "== REUSE_DRGN=1: keeping $OUT/drgn and $OUT/drgn.time"
    else
        rm -rf "$OUT/drgn"
        bench_timed drgn "${CRYODRGN[@]}" backproject_voxel "$sim/particles.mrcs" \
            --poses "$sim/poses.pkl" --ctf "$sim/ctf.pkl" -o "$OUT/drgn/"
    fi
    rm -rf "$OUT/cf"
    bench_timed cf "$CF" reconstruct "$sim/particles.mrcs" --poses "$sim/poses.pkl" --ctf "$sim/ctf.pkl" \
        --reference "$OUT/truth.mrc" --out "$OUT/cf/"

    echo "== FSC against the truth map ($OUT/truth.mrc), unmasked full maps:"
    "$PY" bench/fsc.py "$OUT/truth.mrc" "cryoforge=$OUT/cf/map.mrc" "cryodrgn=$OUT/drgn/backproject.mrc" \
        --cone-envelope cryoforge --json "$OUT/fsc.json" --orientations 2>"$OUT/orientations.txt" | tee "$OUT/fsc.md"
    echo "== orientation check (FSC of every axis permutation/flip of each map; the map as written must win):"
    cat "$OUT/orientations.txt"
    echo "== FSC against the truth map, both maps and the truth × soft sphere (radius 0.45·box ± 5 px):"
    "$PY" bench/fsc.py "$OUT/truth.mrc" "cryoforge=$OUT/cf/map.mrc" "cryodrgn=$OUT/drgn/backproject.mrc" \
        --mask-sphere --json "$OUT/fsc_masked.json" | tee "$OUT/fsc_masked.md"

    "$PY" - "$OUT" "$n" <<'EOF'
import json, re, sys
out, n = sys.argv[1], int(sys.argv[2])

def tv(label):
    t = open(f"{out}/{label}.time").read()
    w = re.search(r"Elapsed \(wall clock\).*: (\S+)", t).group(1).split(":")
    wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(w)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
    cpu = float(re.search(r"User time.*: (\S+)", t).group(1)) + float(re.search(r"System time.*: (\S+)", t).group(1))
    return wall, rss, cpu

d, c = tv("drgn"), tv("cf")
print()
print("| tool | wall (s) | CPU (s) | cores busy | peak RSS (MiB) | particles/s |")
print("|---|---:|---:|---:|---:|---:|")
for name, (w, r, u) in (("cryodrgn backproject_voxel", d), ("cryoforge reconstruct", c)):
    print(f"| {name} | {w:.1f} | {u:.1f} | {u / w:.2f} | {r:.0f} | {n / w:.0f} |")
print()
print(f"speed ratio (cryoDRGN / cryoforge): {d[0] / c[0]:.1f}x wall, {d[2] / c[2]:.1f}x CPU time; "
      f"memory ratio {d[1] / c[1]:.1f}x")
for kind in ("fsc", "fsc_masked"):
    f = json.load(open(f"{out}/{kind}.json"))
    a, b = f["fsc"]["cryoforge"], f["fsc"]["cryodrgn"]
    diff = [x - y for x, y in zip(a, b)]
    k = min(range(len(diff)), key=diff.__getitem__)
    bad = [i for i, x in enumerate(diff) if x < -0.02]
    print(f"{kind}: min(cryoforge - cryoDRGN) = {diff[k]:+.4f} at shell {k}; shells below -0.02: "
          f"{len(bad)} of {len(diff)}{' (' + str(bad[0]) + '..' + str(bad[-1]) + ')' if bad else ''}; "
          f"FSC=0.5 at {f['res_0.5_A']['cryoforge']} / {f['res_0.5_A']['cryodrgn']} Å (cryoforge / cryoDRGN)")
print(f"targets: >= 20x wall {'MET' if d[0] / c[0] >= 20 else 'NOT MET'}; FSC (unmasked) >= cryoDRGN - 0.02 at every shell "
      f"{'MET' if min(x - y for x, y in zip(*[json.load(open(f'{out}/fsc.json'))['fsc'][t] for t in ('cryoforge', 'cryodrgn')])) >= -0.02 else 'NOT MET'}")
EOF
}

for tag in $DATASETS; do
    case $tag in
    rec128) run_set rec128 10000 128 1 0.1 ;;
    rec64) run_set rec64 5000 64 2 0.1 ;;
    clean128) run_set clean128 2000 128 1 inf ;; # diagnostic: noise-free particles
    *) echo "unknown data set $tag (rec128, rec64, clean128)" >&2 && exit 2 ;;
    esac
done
