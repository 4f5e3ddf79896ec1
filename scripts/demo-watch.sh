#!/usr/bin/env bash
# The streaming demo: watch a real street clip in which advguard itself turns seconds 8–12 into
# 8-bit FGSM adversarials (ε = 4 pixel units, untargeted: a simulated digital attacker on the
# feed), and see the alert fire at the attack's onset, as JSON lines, plus a file alert sink,
# the per-frame scores and the explain-view video. The camera is calibrated on the clip's first
# 7 s only, footage the attack never touches (docs/EVAL.md measures the guard on more).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/advguard ] || bash scripts/setup.sh
export ADVGUARD_DATA="${ADVGUARD_DATA:-$(cd .. && pwd)/shared/data}"
export ADVGUARD_MODELS="${ADVGUARD_MODELS:-$ADVGUARD_DATA/models}"
BIN=./target/release/advguard
# The clip: ../shared/data when present, else the cache, else downloaded and sha256-checked.
CLIP="$("$BIN" fetch-clip car-detection)"
OUT=out/watch-demo
mkdir -p "$OUT"
rm -f "$OUT"/alerts.jsonl "$OUT"/spool.redb

echo "== 1. calibrate the camera on its first 7 s of clean footage (onset threshold: no clean jump above it)"
# 105 frames at every 2nd of 30 fps = 0-7 s; the attack starts at 8 s.
"$BIN" calibrate "street=$CLIP" --every-nth 2 --max-frames 105 --fpr 0.005 -o "$OUT/profile.toml"

cat > "$OUT/cameras.toml" <<TOML
[[sink]]
kind = "file"
path = "$OUT/alerts.jsonl"

[spool]
path = "$OUT/spool.redb"

[alerts]
cooldown_secs = 0
TOML

echo "== 2. watch the clip with an FGSM stretch injected at 8–12 s"
"$BIN" watch "street=$CLIP" --every-nth 2 --profile "$OUT/profile.toml" \
    --config "$OUT/cameras.toml" --metrics-addr off \
    --inject fgsm:eps=4:from=8:to=12 \
    --frames-out "$OUT/frames.jsonl" --overlay "$OUT/overlay.mp4" | tee "$OUT/events.jsonl"

echo
echo "== 3. the alert, as the file sink received it"
cat "$OUT/alerts.jsonl"
echo
echo "frames: $OUT/frames.jsonl   explain video: $OUT/overlay.mp4"
