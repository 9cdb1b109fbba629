#!/usr/bin/env bash
# API fuzzing: schemathesis (from PyPI) against the running server's /openapi.json.
# Every generated request must get an answer that is not a 5xx, with a status, media type,
# headers and body the document describes.
#
#   scripts/api-fuzz.sh [HERALD_BINARY] [MAX_EXAMPLES] [SEED]
#
# Defaults: the debug build's herald (under $CARGO_TARGET_DIR, else target/), 30 examples per operation and phase, seed 1 (CI is
# deterministic; pass another seed, or `random`, to explore further).
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-${CARGO_TARGET_DIR:-target}/debug/herald}"
examples="${2:-30}"
seed="${3:-1}"

if ! command -v st > /dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
[ -x "$binary" ] || cargo build --quiet -p herald

data_dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$binary" serve --data-dir "$data_dir" --http "127.0.0.1:$port" > "$data_dir.log" 2>&1 &
server=$!
cleanup() {
    kill "$server" 2> /dev/null || true
    wait "$server" 2> /dev/null || true
    rm -rf "$data_dir" "$data_dir.log"
}
trap cleanup EXIT

ready=no
for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:$port/readyz" > /dev/null 2>&1; then
        ready=yes
        break
    fi
    if ! kill -0 "$server" 2> /dev/null; then
        break
    fi
    sleep 0.1
done
if [ "$ready" != yes ]; then
    echo "api-fuzz: herald serve ($binary) did not become ready on port $port; its log:"
    cat "$data_dir.log"
    exit 1
fi

seed_flag=(--seed "$seed")
[ "$seed" = random ] && seed_flag=()
SCHEMATHESIS_HOOKS=scripts/api-fuzz-hooks.py st --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --max-examples "$examples" --workers 1 "${seed_flag[@]}" --no-color --wait-for-schema 30

# The server must still be up and answering after all of that.
curl -fsS "http://127.0.0.1:$port/healthz" > /dev/null
