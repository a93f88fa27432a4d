#!/usr/bin/env bash
# The information bound of an AdK closed→open simulation (BENCHMARKS.md §3): renders every
# frame noise-free at the first N particles' own poses and CTFs and lets bench/oracle_bound.py
# score the frames by likelihood. usage: bench/oracle_bound.sh SIM_DIR [N=2000]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SIM=$(cd "$1" && pwd); N=${2:-2000}
bench_cryoforge
O=$ROOT/bench/out/oracle
rm -rf "$O" && mkdir -p "$O"
"$CF" -q select "$SIM/particles.star" --first "$N" -o "$O/first.star"
NF=$(grep -c '^ENDMDL' "$SIM/model.pdb")
BOX=$(awk -F' = ' '$1=="box_px"{print $2; exit}' "$SIM/run.toml")
APIX=$(awk -F' = ' '$1=="apix"{print $2; exit}' "$SIM/run.toml")
for ((f = 0; f < NF; f++)); do
    awk -v f=$f -v n=$NF 'BEGIN { for (i = 0; i < n; i++) print (i == f) ? 1 : 0 }' >"$O/w$f.txt"
    "$CF" -q simulate --models "$SIM/model.pdb" --no-center --model-weights "$O/w$f.txt" --density ca \
        --poses-from "$O/first.star" --snr inf --box "$BOX" --apix "$APIX" --out "$O/f$f"
done
python3 bench/oracle_bound.py "$SIM" "$O" "$NF" "$N"
