#!/usr/bin/env bash
# Runs every test of advguard against the real data in ../shared/data (or $ADVGUARD_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
export ADVGUARD_DATA="${ADVGUARD_DATA:-$(cd .. && pwd)/shared/data}"
export ADVGUARD_MODELS="${ADVGUARD_MODELS:-$ADVGUARD_DATA/models}"
cargo test --locked --no-fail-fast "$@"
