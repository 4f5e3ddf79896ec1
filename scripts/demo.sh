#!/usr/bin/env bash
# Fresh machine → demo: installs what advguard needs (idempotent), builds it, then runs the
# streaming guard on a real street clip in which advguard itself turns seconds 8–12 into 8-bit
# FGSM adversarials (ε = 4): the alert fires on that stretch (one event, start → end).
# It also explains a real photo (top-5, the paper's S̄ and its Figure-3 panel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ADVGUARD_DATA="${ADVGUARD_DATA:-$(cd .. && pwd)/shared/data}"
export ADVGUARD_MODELS="${ADVGUARD_MODELS:-$ADVGUARD_DATA/models}"
mkdir -p out
bash scripts/demo-watch.sh
echo
echo "== the paper's Figure-3 panel for a real photo"
./target/release/advguard explain "$ADVGUARD_DATA/images/dev/n01440764_tench.JPEG" -o out/panel.png
echo "panel written to out/panel.png"
