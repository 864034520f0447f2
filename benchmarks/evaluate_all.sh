#!/usr/bin/env bash
# Held-out evaluation sets and the end-to-end reports in docs/reports/pipeline/.
#   bash benchmarks/evaluate_all.sh DATA_DIR
# Simulates every set (fixed seeds, none used in training) unless it exists, then scores
# the networks, the classical reference and the FCN baseline on it.
set -euo pipefail
D=${1:?usage: evaluate_all.sh DATA_DIR}
R=docs/reports/pipeline
mkdir -p "$R"
sim() { [ -f "$D/$1/dataset.json" ] || tmd-defects simulate --out "$D/$1" --previews 2 --workers 2 "${@:2}"; }
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
ev() { tmd-defects evaluate --data "$D/$1" --title "$2" --report "$R/$1.md" --method "${@:3}"; }
ev paper "Paper conditions (MoTe2)" networks classical fcn
ev realistic "Realistic conditions (MoTe2)" networks classical fcn
ev ms_realistic "Multislice (abTEM), realistic conditions, rotated and distorted (MoTe2)" networks classical fcn
ev hard "Low dose and aberrations (MoTe2): λ 3–10, defocus and astigmatism 15–30 Å, contamination, 8-bit/JPEG" \
    networks classical
ev vacuum "Vacuum holes and film edges (MoTe2, realistic, rotated)" networks classical
for m in MoSe2 WSe2 MoS2 WS2; do ev "mat_$m" "$m (realistic, rotated)" networks classical; done
ev structure "Structure (MoTe2): grain, mirror twin, inversion and translation boundaries, non-linear scan distortion, weak chalcogens" networks classical
ev structure_MoSe2 "Structure (MoSe2)" networks classical
ev structure_WSe2 "Structure (WSe2)" networks classical
ev ms_structure "Multislice (abTEM), structure preset (MoTe2)" networks classical
python benchmarks/poc_study.py --data "$D/paper" "$D/realistic" --out docs/reports/poc.md
