#!/usr/bin/env bash
# The hour-long soak of docs/RELIABILITY.md: two live RTSP cameras replaying the real clips,
# the server killed every 5 minutes; RSS, frame age, drops and reconnects every minute into
# OUT/soak.csv and OUT/soak.png. Exits 1 when a goal fails (advguard soak --check).
#   bash scripts/soak.sh [OUT] [-- extra advguard soak / watch arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVGUARD_DATA="${ADVGUARD_DATA:-$(cd .. && pwd)/shared/data}"
export ADVGUARD_MODELS="${ADVGUARD_MODELS:-$ADVGUARD_DATA/models}"
out="${1:-out/soak}"
[ $# -gt 0 ] && shift
cargo build --release --locked
exec ./target/release/advguard soak --duration "${SOAK_DURATION:-1h}" -o "$out" --check "$@"
