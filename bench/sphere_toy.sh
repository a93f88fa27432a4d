#!/usr/bin/env bash
# cryoSPHERE rigid-domain toy (paper App. B.1 on AdK; see BENCHMARKS.md "cryoSPHERE").
# usage: bench/sphere_toy.sh WORKDIR [N_PARTICLES] [EPOCHS]
set -euo pipefail
W=${1:?workdir}; N=${2:-20000}; E=${3:-12}
B=${CRYOFORGE:-target/release/cryoforge}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$W"
$B sphere toy "$HERE/../data/demo/adk_closed.pdb" --out "$W/toy"          # LID 122-159, angles x0.5
$B simulate --models "$W/toy/models.pdb" --model-weights "$W/toy/model_weights.txt" --no-center \
  --density ca --n "$N" --box 64 --apix 1.5 --snr 0.1 --shift-a 5 --seed 1 --out "$W/sim" -q
$B sphere train "$W/sim/particles.star" --reference "$W/toy/reference.pdb" --out "$W/run4" \
  --n-segm 4 --epochs "$E" --lr 1e-4 --lr-segmentation 1e-2 --log-every 20 -q
$B sphere analyze "$W/run4" --no-umap -q
python3 "$HERE/sphere_toy_score.py" "$W/run4/analysis" "$W/toy" "$W/sim/truth.csv" | tee "$W/run4/toy_score.json"
