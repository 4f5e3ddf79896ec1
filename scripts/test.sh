#!/usr/bin/env bash
# Runs every test of advguard against the real data in ../shared/data (or $ADVGUARD_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVGUARD_DATA="${ADVGUARD_DATA:-$(cd .. && pwd)/shared/data}"
export ADVGUARD_MODELS="${ADVGUARD_MODELS:-$ADVGUARD_DATA/models}"
status=0
cargo test --locked --no-fail-fast "$@" || status=$?
# The GStreamer element (gst-advguard/): builds libgstadvguard.so and drives it through
# gst-inspect-1.0 / gst-launch-1.0.
cargo test --locked --no-fail-fast -p gst-advguard "$@" || status=$?
exit $status
