#!/usr/bin/env bash
# Held-out evaluation sets and the end-to-end reports in docs/reports/pipeline/.
#   bash benchmarks/evaluate_all.sh DATA_DIR
# Simulates every set (fixed seeds, none used in training) unless it exists, then scores
# the networks, the classical reference and the FCN baseline on it.
set -euo pipefail
D=${1:?usage: evaluate_all.sh DATA_DIR}
R=docs/reports/pipeline
mkdir -p "$R"
bash "$(dirname "$0")/simulate_heldout.sh" "$D"
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
for m in WSe2 MoS2 MoSe2; do ev "ms_structure_$m" "Multislice (abTEM), structure preset ($m)" networks classical; done
python benchmarks/poc_study.py --data "$D/paper" "$D/realistic" --out docs/reports/poc.md
