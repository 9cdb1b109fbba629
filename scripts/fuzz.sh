#!/usr/bin/env bash
# The cargo fuzz targets (fuzz/), each for a bounded time:
#   log_recovery  the log's recovery and record decoding on arbitrary segment contents
#   event_parse   CloudEvents parsing (structured, batch, plain JSON) on arbitrary bodies
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 20)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-20}"
# The instrumented nightly build keeps to its own target directory (fuzz/target), apart from
# the workspace's.
unset CARGO_TARGET_DIR
if ! cargo fuzz --version > /dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
# cargo fuzz needs nightly's -Z flags: the nightly toolchain when it is installed, else the
# stable one with RUSTC_BOOTSTRAP (same compiler features, no download).
if rustup run nightly rustc --version > /dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "fuzz: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    toolchain=()
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in log_recovery event_parse; do
    echo "fuzz: $target for ${seconds}s"
    status=0
    cargo "${toolchain[@]}" fuzz run -O "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 > "$log" 2>&1 || status=$?
    grep -E 'stat::number_of_executed_units|^Done ' "$log" || true
    if [ "$status" -ne 0 ]; then
        # A crash (its input is kept under fuzz/artifacts/), or the build failed.
        tail -60 "$log"
        echo "fuzz: $target failed (exit $status)"
        exit 1
    fi
done
