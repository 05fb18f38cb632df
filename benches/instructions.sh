#!/usr/bin/env bash
# Instructions per request: a certline binary under valgrind's callgrind, a fixed number of
# adds from the load generator, the instructions the server executed (all threads) divided
# by the requests. Unlike CPU time this does not depend on what else the machine runs, so it
# is the figure for before/after comparisons of code changes (BENCHMARKS.md).
#
#   benches/instructions.sh BIN [--mode relaxed|durable] [--connections N] [--requests N]
#                           [--warmup N] [--out DIR]
#
# The counters are zeroed after the warm-up (`callgrind_control --zero`) and dumped after the
# measured requests (`callgrind_control --dump`), so start-up, the per-connection `command
# apikey` and shutdown are left out. Prints one JSON line; the dump stays in DIR for
# `callgrind_annotate`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=$(realpath "$1"); shift
MODE=relaxed CONNS=64 REQS=5000 WARM=1000 OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --requests) REQS=$2; shift ;;
    --warmup) WARM=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
# LOADGEN=PATH: a load generator built already (its build compiles the library again).
LG=${LOADGEN:-$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -n 1 | cut -d'"' -f4)}
WORK=$(mktemp -d "$ROOT/target/instructions-work.XXXXXX")
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then kill -9 "$SERVER" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$WORK/data"
}
trap cleanup EXIT
cat >"$WORK/config.toml" <<EOF
[durability]
mode = "$MODE"
relaxed_flush_ms = 1000
[limits]
max_connections = 20000
max_connections_per_ip = 20000
idle_timeout_secs = 3600
[rate_limit]
apikey_per_minute = 1000000
apikey_burst = 1000000
EOF
valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" --dump-instr=no --compress-strings=no \
  "$BIN" serve --listen 127.0.0.1:0 --data "$WORK/data" --config "$WORK/config.toml" \
  >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER=$!
for _ in $(seq 1 600); do
  grep -q "listening on" "$WORK/stdout" && break
  sleep 0.1
done
ADDR=$(sed -n 's/.*listening on //p' "$WORK/stdout" | head -n 1)
[ -n "$ADDR" ] || { cat "$WORK/stderr" >&2; exit 1; }
# Warm-up in a run of its own (keys made, sled's pages in the cache), then zero.
"$LG" --target certline --addr "$ADDR" --connections "$CONNS" --requests "$WARM" >/dev/null
callgrind_control --zero "$SERVER" >/dev/null
"$LG" --json --target certline --addr "$ADDR" --connections "$CONNS" --requests "$REQS" \
  >"$WORK/load.json"
callgrind_control --dump="measured" "$SERVER" >/dev/null
kill -TERM "$SERVER"; wait "$SERVER" 2>/dev/null || true
SERVER=""
DUMP=$(grep -l "^desc: Trigger: Client Request: measured\|^desc: Trigger: .*measured" "$OUT"/callgrind.out.* | head -n 1)
IR=$(sed -n 's/^summary: //p; s/^totals: //p' "$DUMP" | head -n 1 | cut -d' ' -f1)
OK=$(grep -o '"ok":[0-9]*' "$WORK/load.json" | cut -d: -f2)
# The load generator's own connections each first ask for an API key: CONNS of the measured
# requests' instructions are apikeys, not adds (under 2 % at the default sizes).
printf '{"kind":"instructions","binary":"%s","mode":"%s","connections":%s,"requests":%s,"ok":%s,"instructions":%s,"instructions_per_request":%s,"dump":"%s"}\n' \
  "$BIN" "$MODE" "$CONNS" "$REQS" "$OK" "$IR" "$(awk -v i="$IR" -v n="$OK" 'BEGIN { printf "%.0f", i / n }')" "$DUMP"
