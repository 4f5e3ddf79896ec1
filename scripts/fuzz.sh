#!/usr/bin/env bash
# Fuzzes advguard's parsers of untrusted input with cargo-fuzz (libFuzzer, AddressSanitizer,
# debug assertions); targets and results: docs/RELIABILITY.md.
#   bash scripts/fuzz.sh --smoke               # 30 s per target, seed 1, fresh corpus (.ci/run)
#   bash scripts/fuzz.sh [SECONDS] [TARGET ...] # default 600 s per target, every target
#   bash scripts/fuzz.sh --build               # build only
#   bash scripts/fuzz.sh --no-build 300         # run the binaries already in fuzz/target
# Needs the nightly toolchain (exits 0, saying so, when there is none) and installs cargo-fuzz
# when it is absent. The build goes to fuzz/target (its own, nightly). New corpus entries go to
# fuzz/target/corpus/<target> (not committed); the committed seeds in fuzz/corpus/<target> are
# only read. When $ADVGUARD_DATA is set, a few of its photos are used as extra image seeds.
# Exits 1 if a target found a crash (the input is in fuzz/artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(onnx_compile onnx_engine manifest cameras_toml image_decode spool_record spool_file)
secs=600
smoke=0
build_only=0
no_build=0
targets=()
for a in "$@"; do
  case "$a" in
    --smoke) secs=30; smoke=1 ;;
    --build) build_only=1 ;;
    --no-build) no_build=1 ;;
    [0-9]*) secs="$a" ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) targets+=("$a") ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: SKIPPED: no nightly toolchain here (rustup toolchain install nightly); cargo-fuzz needs it"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

bin=fuzz/target/x86_64-unknown-linux-gnu/release
if [ "$no_build" = 0 ]; then
  echo "== building the fuzz targets (nightly, ASan)"
  t0=$(date +%s)
  nice -n 10 cargo +nightly fuzz build
  echo "== build took $(( $(date +%s) - t0 )) s"
fi
[ "$build_only" = 0 ] || exit 0

logs=fuzz/target/logs
mkdir -p "$logs"
# Extra image seeds from the real photos, read at run time (never copied into the repo).
extra_images=()
if [ -n "${ADVGUARD_DATA:-}" ] && [ -d "$ADVGUARD_DATA/images" ]; then
  d=fuzz/target/data-seeds/image_decode
  mkdir -p "$d"
  # The list is read whole before `head` (an early `head` exit gave `sort` SIGPIPE, and under
  # pipefail that ended the script with status 141 before any target ran).
  mapfile -t photos < <(find "$ADVGUARD_DATA/images" -type f \( -iname '*.jpeg' -o -iname '*.jpg' -o -iname '*.png' \) -size -40k 2>/dev/null | sort)
  for f in "${photos[@]:0:4}"; do cp "$f" "$d/"; done
  [ -z "$(ls -A "$d")" ] || extra_images=("$d")
fi

# Spool files are megabytes of mostly zeros (redb preallocates): committed gzipped.
spool_seeds=fuzz/target/data-seeds/spool_file
mkdir -p "$spool_seeds"
for z in fuzz/seeds/spool_file/*.gz; do
  [ -e "$z" ] && gunzip -c "$z" > "$spool_seeds/$(basename "$z" .gz)"
done

export ADVGUARD_FUZZ_TMP="${ADVGUARD_FUZZ_TMP:-$(mktemp -d)}"
failed=()
summary=()
for t in "${targets[@]}"; do
  work=fuzz/target/corpus/$t
  seed_args=()
  if [ "$smoke" = 1 ]; then
    # The smoke run is what CI runs: a fixed seed and no corpus kept from earlier runs, so a
    # clean clone here meets the same inputs as CI (up to how far 30 s reach on each machine).
    work=fuzz/target/smoke-corpus/$t
    rm -rf "$work"
    seed_args=(-seed=1)
  fi
  mkdir -p "$work" "fuzz/artifacts/$t"
  dirs=("$work")
  [ ! -d "fuzz/corpus/$t" ] || dirs+=("fuzz/corpus/$t")
  [ "$t" != image_decode ] || dirs+=("${extra_images[@]}")
  [ "$t" != spool_file ] || dirs+=("$spool_seeds")
  echo "== $t: ${secs} s"
  # rss/malloc limits: an input that makes a parser allocate > 2 GiB is a finding (OOM).
  # The binary is run directly (what `cargo fuzz run` does after building).
  if nice -n 10 "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" "${dirs[@]}" \
      -max_total_time="$secs" "${seed_args[@]}" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 >"$logs/$t.log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$t")
  fi
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -1 || true)
  [ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+' "$logs/$t.log" | tail -1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$logs/$t.log" | grep -oE '[0-9]+$' || echo "?")
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$logs/$t.log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(echo "$done_line" | grep -oE 'cov: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  ft=$(echo "$done_line" | grep -oE 'ft: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  corp=$(echo "$done_line" | grep -oE 'corp: [0-9]+' | grep -oE '[0-9]+' || echo "?")
  summary+=("$(printf '| %-13s | %4s s | %10s | %7s | %6s | %6s | %5s | %s |' "$t" "$secs" "$execs" "$rate" "$cov" "$ft" "$corp" "$status")")
  if [ "$status" = CRASH ]; then
    grep -E 'ERROR: libFuzzer|panicked at|SUMMARY|Test unit written' "$logs/$t.log" | head -5 || true
  fi
done

echo
echo "| target        | budget | executions | exec/s  | cov    | ft     | corp  | result |"
echo "|---------------|--------|------------|---------|--------|--------|-------|--------|"
printf '%s\n' "${summary[@]}"
echo "(logs: $logs/)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/)"
  exit 1
fi
