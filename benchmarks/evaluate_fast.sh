#!/usr/bin/env bash
# The fast configuration (--classifier small --hexagons sample) on every held-out set of
# evaluate_all.sh, reports in docs/reports/pipeline_fast/ (compare with docs/reports/pipeline/).
#   bash benchmarks/evaluate_fast.sh DATA_DIR     (the sets evaluate_all.sh simulated)
set -euo pipefail
D=${1:?usage: evaluate_fast.sh DATA_DIR}
R=docs/reports/pipeline_fast
mkdir -p "$R"
for s in paper realistic ms_realistic hard vacuum mat_MoSe2 mat_WSe2 mat_MoS2 mat_WS2 structure structure_MoSe2 \
    structure_WSe2 ms_structure; do
  title=$(sed -n '1s/^# //p' "docs/reports/pipeline/$s.md")
  tmd-defects evaluate --data "$D/$s" --title "$title (fast)" --report "$R/$s.md" --method networks \
      --classifier small --hexagons sample
done
