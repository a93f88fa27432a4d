#!/usr/bin/env bash
# Peer benchmark: images/s of `cryoforge simulate --density atomic` (AdK, 3341 atoms, box 128,
# 1 Å/px, CTF, shifts, SNR 0.1) against the same task in NumPy (bench/simulate_numpy.py).
#
#   bash bench/simulate_vs_numpy.sh
#   CRYOFORGE_BENCH_PYTHON=/path/to/python bash bench/simulate_vs_numpy.sh   # reuse an interpreter with numpy
#   N_CF=30000 N_NP=8000 bash bench/simulate_vs_numpy.sh                       # image counts (each side ≥ 20 s)
#
# Both sides write a float32 MRC stack of their images to bench/out/simulate/. The rates are
# compared per image; the numbers are only as good as the machine is quiet (load averages are
# printed before each run).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N_CF=${N_CF:-30000}
N_NP=${N_NP:-8000}
MODEL=data/demo/adk_closed.pdb
COMMON=(--box 128 --apix 1 --snr 0.1 --defocus-a 10000,25000 --shift-a 4)
OUT=$ROOT/bench/out/simulate

ensure_time
bench_python numpy numpy
bench_cryoforge
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== machine: $(machine_info)"
"$PY" -c 'import numpy; print("== numpy", numpy.__version__, "(FFT: pocketfft, single-threaded; gathers single-threaded)")'

# cryoforge: setup alone (parse, density, padded 3D FFT, one image) and the full run.
bench_timed cf_setup "$CF" simulate --model "$MODEL" --n 1 "${COMMON[@]}" --seed 1 --out "$OUT/cf_setup"
bench_timed cryoforge "$CF" simulate --model "$MODEL" --n "$N_CF" "${COMMON[@]}" --seed 1 --out "$OUT/cf"
bench_timed numpy "$PY" bench/simulate_numpy.py --model "$MODEL" --n "$N_NP" "${COMMON[@]}" --seed 1 \
    -o "$OUT/numpy_particles.mrcs"

"$PY" - "$OUT" "$N_CF" "$N_NP" <<'EOF'
import json, re, sys
out, n_cf, n_np = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def tv(label):
    t = open(f"{out}/{label}.time").read()
    w = re.search(r"Elapsed \(wall clock\).*: (\S+)", t).group(1).split(":")
    wall = sum(float(x) * 60 ** i for i, x in enumerate(reversed(w)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
    cpu = float(re.search(r"User time.*: (\S+)", t).group(1)) + float(re.search(r"System time.*: (\S+)", t).group(1))
    return wall, rss, cpu

cw, crss, ccpu = tv("cryoforge")
sw, _, scpu = tv("cf_setup")
nw, nrss, ncpu = tv("numpy")
nj = json.loads(open(f"{out}/numpy.log").read().strip().splitlines()[-1])
rows = [
    ("cryoforge simulate", n_cf, cw, n_cf / cw, n_cf / max(cw - sw, 1e-9), ccpu / cw, n_cf / ccpu, crss),
    ("NumPy script", n_np, nw, n_np / nw, nj["img_per_s_excl_setup"], ncpu / nw, n_np / ncpu, nrss),
]
print()
print(f"cryoforge setup (n = 1 run): {sw:.2f} s wall; NumPy setup (in-script timer): {nj['setup_s']:.2f} s "
      f"(density {nj['density_s']:.2f} s)")
print()
print("| tool | images | wall (s) | img/s (whole run) | img/s (excl. setup) | cores busy | img per CPU-s | peak RSS (MiB) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.0f} | {r[4]:.0f} | {r[5]:.2f} | {r[6]:.0f} | {r[7]:.0f} |")
print()
print(f"speed ratio cryoforge / NumPy: {rows[0][3] / rows[1][3]:.2f}x (whole runs), "
      f"{rows[0][4] / rows[1][4]:.2f}x (excluding setup), {rows[0][6] / rows[1][6]:.2f}x (per CPU-second)")
print(f"target >= 5x on the same 2 cores: {'MET' if rows[0][3] / rows[1][3] >= 5 else 'NOT MET'} (whole runs)")
short = [r[0] for r in rows if r[2] < 20]
if short:
    print(f"WARNING: {', '.join(short)} ran < 20 s: setup dominates; raise N_CF / N_NP before quoting the ratio")
EOF
