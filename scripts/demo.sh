#!/usr/bin/env bash
# Fresh machine → demo: installs what advguard needs, builds it, and explains a real photo
# (top-5, the paper's S̄, and the Figure-3 panel: image | feature response | local entropy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ADVGUARD_DATA="${ADVGUARD_DATA:-$(cd .. && pwd)/shared/data}"
export ADVGUARD_MODELS="${ADVGUARD_MODELS:-$ADVGUARD_DATA/models}"
mkdir -p out
./target/release/advguard explain "$ADVGUARD_DATA/images/dev/n01440764_tench.JPEG" -o out/panel.png
echo "panel written to out/panel.png"
