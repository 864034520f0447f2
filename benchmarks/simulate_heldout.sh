#!/usr/bin/env bash
# The held-out evaluation sets (fixed seeds, none used in training), each simulated unless
# it exists; evaluate_all.sh scores them, bench_gpu.py compares the GPU and CPU paths on them.
#   bash benchmarks/simulate_heldout.sh DATA_DIR     (WORKERS=N: simulation processes, default 2)
# The multislice sets (ms_*) need the optional abTEM backend.
set -euo pipefail
D=${1:?usage: simulate_heldout.sh DATA_DIR}
W=${WORKERS:-2}
sim() { [ -f "$D/$1/dataset.json" ] || tmd-defects simulate --out "$D/$1" --previews 2 --workers "$W" "${@:2}"; }
sim paper --n 20 --size 512 --preset paper --pixel-size 0.12 --defect-fraction 0.2 --seed 1001
sim realistic --n 20 --size 384 --preset realistic --pixel-size 0.06 0.15 --defect-fraction 0.2 --seed 1002
sim vacuum --n 20 --size 512 --preset realistic --pixel-size 0.06 0.15 --rotation random --vacuum 1 \
    --defect-fraction 0.05 0.2 --seed 8101
for m in MoSe2 WSe2 MoS2 WS2; do
  sim "mat_$m" --n 10 --size 512 --material "$m" --preset realistic --pixel-size 0.06 0.15 --rotation random \
      --defect-fraction 0.05 0.2 --seed 8201
done
# low dose and poor optics (the "hard" preset)
sim hard --n 20 --size 384 --preset hard --pixel-size 0.06 0.15 --rotation random --defect-fraction 0.1 0.2 \
    --seed 9701
sim ms_realistic --n 10 --size 256 --model multislice --frozen-phonons 2 --preset realistic --pixel-size 0.09 0.12 \
    --rotation random --defect-fraction 0.1 0.2 --seed 9301
# domain boundaries, non-linear scan distortion, weak chalcogens (the "structure" preset)
sim structure --n 24 --size 512 --preset structure --pixel-size 0.06 0.15 --rotation random \
    --defect-fraction 0.05 0.2 --seed 9501
sim structure_MoSe2 --n 12 --size 512 --material MoSe2 --preset structure --pixel-size 0.06 0.15 --rotation random \
    --defect-fraction 0.05 0.2 --seed 9511
sim structure_WSe2 --n 12 --size 512 --material WSe2 --preset structure --pixel-size 0.06 0.15 --rotation random \
    --defect-fraction 0.05 0.2 --seed 9521
sim ms_structure --n 6 --size 256 --model multislice --frozen-phonons 2 --preset structure --pixel-size 0.09 0.12 \
    --rotation random --defect-fraction 0.1 0.2 --seed 9601
for m in WSe2 MoS2 MoSe2; do
  n=4; [ "$m" = WSe2 ] || n=2
  sim "ms_structure_$m" --n "$n" --size 320 --model multislice --frozen-phonons 2 --preset structure --material "$m" \
      --pixel-size 0.09 0.12 --rotation random --defect-fraction 0.1 0.2 --seed 9621
done
