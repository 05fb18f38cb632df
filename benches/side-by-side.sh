#!/usr/bin/env bash
# certline vs Redis, side by side on this machine: durable writes (throughput, latency and
# server CPU per request), pipelined writes, connections, memory, disk, start-up, sync calls per
# acknowledged write, and what a `list` page costs deep into a key. See BENCHMARKS.md.
#
#   benches/side-by-side.sh [--quick] [--reps N] [--domains N] [--out DIR] [--keep] [--certline BIN]
#
#   --quick       3 repetitions, smaller runs, 100,000 stored domains (a few minutes)
#   --reps N      repetitions of every throughput run (default 5; medians are reported)
#   --domains N   domains stored for the disk and start-up figures (default 1,000,000)
#   --scale F     multiply every throughput run's request count by F (default 1)
#   --out DIR     where results go (default target/side-by-side/<time>)
#   --keep        keep the servers' data directories
#   --only PARTS  run only these parts, comma-separated: sweep (throughput, latency, CPU per
#                 request, pipelined), list, rss, disk (disk and start-up), syncs, and pg
#                 (certline on PostgreSQL, one and two instances, against Redis `always`;
#                 not in the default set: it needs the PostgreSQL server below)
#   --pg-url URL  an administrator's URL of the PostgreSQL server for `pg` (default
#                 postgres://postgres@127.0.0.1:5432/test, trust authentication)
#   --certline BIN  measure this certline binary instead of building the worktree's (e.g. a
#                 copy built from an earlier commit, for before/after figures)
#
# Pairs compared: certline durable vs Redis `appendfsync always` ("strict"), certline relaxed
# vs Redis `appendfsync everysec` ("relaxed"). Every server listens on 127.0.0.1 only, and
# every server this script starts is killed when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0 REPS="" DOMAINS="" SCALE=1 OUT="" KEEP=0 CERTLINE="" ONLY=sweep,list,rss,disk,syncs
PG_URL=postgres://postgres@127.0.0.1:5432/test
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --reps) REPS=$2; shift ;;
    --domains) DOMAINS=$2; shift ;;
    --scale) SCALE=$2; shift ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    --certline) CERTLINE=$(realpath "$2"); shift ;;
    --only) ONLY=$2; shift ;;
    --pg-url) PG_URL=$2; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# Server CPU is read from /proc/PID/stat in 10 ms clock ticks, so even the quick runs last a
# good part of a second each (the 1-connection runs are cheap, so they get more requests).
if [ "$QUICK" = 1 ]; then
  REPS=${REPS:-3} DOMAINS=${DOMAINS:-100000}
  SWEEP_REQS=(1:2000 8:4000 64:8000 256:16000)  # connections:requests per run
  CPR_REQS=(1:1000 32:2000)
  PIPE_REQS=(1:10000)  # one connection, PIPE_DEPTH requests per burst
  SYNC_ACKS=2000
  RESTARTS=1
  LIST_DEPTH=40000 LIST_REPS=50
else
  REPS=${REPS:-5} DOMAINS=${DOMAINS:-1000000}
  SWEEP_REQS=(1:3000 8:6000 64:25000 256:50000)
  CPR_REQS=(1:1500 32:6000)
  PIPE_REQS=(1:40000)
  SYNC_ACKS=10000
  RESTARTS=3
  LIST_DEPTH=40000 LIST_REPS=100
fi
PIPE_DEPTH=${PIPE_DEPTH:-1000}
SYNC_CONNS=(1 64)
IDLE_CONNS=${IDLE_CONNS:-10000}
LOAD_CONNS=64
OUT=${OUT:-target/side-by-side/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw.jsonl
: >"$RAW"
want() { [[ ",$ONLY," == *",$1,"* ]]; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# --- tools ------------------------------------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v strace >/dev/null || need_apt+=(strace)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# 10,000 idle connections need more descriptors than the usual 1024 (server and client).
ulimit -Hn 65536 2>/dev/null || true
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ -z "$CERTLINE" ]; then
  log "building (release)"
  cargo build --release --bin certline
  CERTLINE=$ROOT/target/release/certline
fi
# LOADGEN=PATH: a load generator built already (its build compiles the library again).
LG=${LOADGEN:-$(cargo bench --bench loadgen --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*loadgen[^"]*"' | tail -n 1 | cut -d'"' -f4)}
[ -x "$LG" ] || { echo "could not find the loadgen binary" >&2; exit 1; }

# Both servers keep their data under one directory on the project's disk (not a tmpfs), so
# they pay for the same disk.
WORK=$(mktemp -d "$ROOT/target/side-by-side-work.XXXXXX")

# --- server lifecycle -------------------------------------------------------------------------
PIDS=()  # everything started here; killed on exit
ppid_of() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f2; }
# Only a process that is still this script's child or grandchild (a server under strace) is
# killed, so a recycled pid can never hit someone else's process.
cleanup() {
  local i p parent
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do  # newest first: a server before its strace
    p=${PIDS[i]}
    parent=$(ppid_of "$p") || continue
    if [ "$parent" = $$ ] || [ "$(ppid_of "$parent")" = $$ ]; then
      kill -9 "$p" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  if [ "$KEEP" = 0 ]; then rm -rf "$WORK"; else log "data kept in $WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

# A port below the kernel's ephemeral range (so no outgoing connection holds it) that nothing
# listens on. Redis cannot be given port 0, so its start is retried if the port was taken.
free_port() {
  local low p
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  while :; do
    p=$((10000 + RANDOM % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

# start_server NAME PATTERN WRAP... -- CMD...: starts CMD (prefixed by WRAP, e.g. strace) with
# its stdout on a FIFO, waits for a line containing PATTERN and sets SRV_PID (the server's
# own pid), SRV_LINE and SRV_START_MS (time from spawn to that line).
start_server() {
  local name=$1 pattern=$2; shift 2
  local dir=$WORK/$name fifo fd line t0
  mkdir -p "$dir"
  fifo=$dir/stdout.fifo
  rm -f "$fifo"; mkfifo "$fifo"
  t0=$(now_us)
  "$@" >"$fifo" 2>>"$dir/stderr.log" &
  local pid=$!
  PIDS+=("$pid")
  exec {fd}<"$fifo"
  SRV_LINE=""
  while IFS= read -r -t 300 line <&"$fd"; do
    printf '%s\n' "$line" >>"$dir/stdout.log"
    if [[ $line == *"$pattern"* ]]; then SRV_LINE=$line; break; fi
  done
  SRV_START_MS=$(( ($(now_us) - t0) / 1000 ))
  if [ -z "$SRV_LINE" ]; then
    echo "$name did not start; its logs:" >&2
    tail -n 20 "$dir/stderr.log" "$dir/stdout.log" >&2 2>/dev/null || true
    exec {fd}<&-
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  cat <&"$fd" >>"$dir/stdout.log" &  # keep draining: the server must never block on stdout
  PIDS+=("$!")
  exec {fd}<&-
  SRV_PID=$pid
  if [ "$(basename "$1")" = strace ]; then  # the server is strace's child
    SRV_PID=$(pgrep -P "$pid" | head -n 1)
    PIDS+=("$SRV_PID")  # after its wrapper: cleanup goes backwards, so it dies first
  fi
  SRV_WRAPPER=$pid
}

# stop_server: SIGTERM (both servers flush and exit cleanly), then wait for the wrapper.
stop_server() {
  local pid=$1 wrapper=$2 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do
    kill -0 "$wrapper" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$wrapper" 2>/dev/null || true
  wait "$wrapper" 2>/dev/null || true
}

# start_certline NAME durable|relaxed [WRAP...]: sets CL_PID, CL_WRAPPER, CL_ADDR, CL_START_MS.
start_certline() {
  local name=$1 mode=$2; shift 2
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name/config.toml" <<EOF
[durability]
mode = "$mode"
relaxed_flush_ms = 1000
[limits]
max_connections = 20000
max_connections_per_ip = 20000
idle_timeout_secs = 3600
[rate_limit]
apikey_per_minute = 1000000
apikey_burst = 1000000
claim_per_minute = 1000000
claim_burst = 1000000
${CL_EXTRA_CONFIG:-}
EOF
  start_server "$name" "listening on " "$@" "$CERTLINE" serve --listen 127.0.0.1:0 \
    --data "$WORK/$name/data" --config "$WORK/$name/config.toml" || exit 1
  CL_PID=$SRV_PID CL_WRAPPER=$SRV_WRAPPER CL_START_MS=$SRV_START_MS
  CL_ADDR=${SRV_LINE#listening on }
}

# start_redis NAME always|everysec [WRAP...]: sets RD_PID, RD_WRAPPER, RD_ADDR, RD_START_MS.
# A restart with the same NAME reuses the port and the AOF.
start_redis() {
  local name=$1 fsync=$2 port try; shift 2
  mkdir -p "$WORK/$name/data"
  for try in 1 2 3 4 5; do
    if [ -f "$WORK/$name/port" ]; then port=$(cat "$WORK/$name/port"); else
      port=$(free_port); echo "$port" >"$WORK/$name/port"; fi
    start_server "$name" "Ready to accept connections" "$@" redis-server \
      --bind 127.0.0.1 --port "$port" --dir "$WORK/$name/data" --logfile "" --daemonize no \
      --appendonly yes --save "" --appendfsync "$fsync" --maxclients 15000 && break
    [ "$try" = 5 ] && exit 1
    rm -f "$WORK/$name/port"
    log "retrying $name on another port"
  done
  RD_PID=$SRV_PID RD_WRAPPER=$SRV_WRAPPER RD_START_MS=$SRV_START_MS
  RD_ADDR=127.0.0.1:$port
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# lg TAGS... -- LOADGEN ARGS...: runs the load generator, appends its JSON line to raw.jsonl.
# Pass --server-pid so that it reports the server's CPU per request.
lg() {
  local tags=()
  while [ "$1" != -- ]; do tags+=(--tag "$1"); shift; done
  shift
  local line
  line=$("$LG" --json "$@" "${tags[@]}")
  printf '%s\n' "$line" >>"$RAW"
  log "  $* -> $(grep -o '"throughput_rps":[0-9.]*' <<<"$line" | cut -d: -f2 | cut -d. -f1) req/s, \
$(grep -o '"cpu_us_per_request":[0-9.]*' <<<"$line" | cut -d: -f2 | cut -c1-5) µs CPU/req, \
errors $(grep -o '"errors":[0-9]*' <<<"$line" | cut -d: -f2)"
}

# --- 1. throughput and latency sweeps ---------------------------------------------------------
sweep() {
  local pair=$1 cmode=$2 rmode=$3 rep spec conns reqs warm order t
  log "pair $pair: certline $cmode vs Redis appendfsync $rmode"
  start_certline "sweep-$pair-certline" "$cmode"
  start_redis "sweep-$pair-redis" "$rmode"
  local ca=$CL_ADDR ra=$RD_ADDR cpid=$CL_PID rpid=$RD_PID
  for ((rep = 1; rep <= REPS; rep++)); do
    # Alternate which server goes first, so drift on this shared machine hits both alike.
    if ((rep % 2)); then order="certline redis"; else order="redis certline"; fi
    for spec in "${SWEEP_REQS[@]}" "${CPR_REQS[@]/#/cpr:}" "${PIPE_REQS[@]/#/pipe:}"; do
      local mode=persistent
      if [[ $spec == cpr:* ]]; then mode=connect-per-request; spec=${spec#cpr:}; fi
      if [[ $spec == pipe:* ]]; then mode=pipelined; spec=${spec#pipe:}; fi
      conns=${spec%%:*}
      reqs=$(awk -v r="${spec#*:}" -v s="$SCALE" 'BEGIN { printf "%d", r * s }')
      warm=$((reqs / 10 > conns ? reqs / 10 : conns))
      for t in $order; do
        local addr=$ca pid=$cpid
        [ "$t" = redis ] && addr=$ra pid=$rpid
        lg "pair=$pair" "rep=$rep" -- --target "$t" --addr "$addr" --mode "$mode" \
          --pipeline "$PIPE_DEPTH" --connections "$conns" --requests "$reqs" --warmup "$warm" \
          --server-pid "$pid"
      done
    done
  done
  stop_server "$CL_PID" "$CL_WRAPPER"
  stop_server "$RD_PID" "$RD_WRAPPER"
}
if want sweep; then
  sweep strict durable always
  sweep relaxed relaxed everysec
fi

# --- 1b. what a `list` page costs deep into one key (certline only; the target is relative to
# offset 0 of the same run, so there is nothing to pair it with) --------------------------------
if want list; then
log "list paging with $LIST_DEPTH domains under one key"
start_certline list-certline relaxed
for ((rep = 1; rep <= REPS; rep++)); do
  "$LG" --json --target certline --addr "$CL_ADDR" --server-pid "$CL_PID" \
    --list-depth "$LIST_DEPTH" --list-offsets "0,$((LIST_DEPTH / 2)),$LIST_DEPTH" \
    --list-reps "$LIST_REPS" --tag "rep=$rep" >>"$RAW"
  log "  rep $rep done"
done
stop_server "$CL_PID" "$CL_WRAPPER"
fi

# --- 2. memory per idle connection ------------------------------------------------------------
idle_rss() {
  local server=$1 pid=$2 addr=$3 base loaded lgpid i
  base=$(rss_kb "$pid")
  "$LG" --target "$server" --addr "$addr" --idle "$IDLE_CONNS" >"$WORK/idle-$server.out" 2>&1 &
  lgpid=$!
  PIDS+=("$lgpid")
  for ((i = 0; i < 1200; i++)); do
    grep -q '^ready' "$WORK/idle-$server.out" && break
    kill -0 "$lgpid" 2>/dev/null || break
    sleep 0.1
  done
  grep -q '^ready' "$WORK/idle-$server.out" || { cat "$WORK/idle-$server.out" >&2; exit 1; }
  sleep 1
  loaded=$(rss_kb "$pid")
  kill "$lgpid"; wait "$lgpid" 2>/dev/null || true
  printf '{"kind":"rss","server":"%s","detail":"%s idle connections","connections":%s,"baseline_kb":%s,"loaded_kb":%s}\n' \
    "$server" "$IDLE_CONNS" "$IDLE_CONNS" "$base" "$loaded" >>"$RAW"
  log "  $server RSS: $base kB -> $loaded kB with $IDLE_CONNS idle connections"
}
if want rss; then
log "RSS at $IDLE_CONNS idle connections"
start_certline rss-certline durable
idle_rss certline "$CL_PID" "$CL_ADDR"
stop_server "$CL_PID" "$CL_WRAPPER"
start_redis rss-redis everysec
idle_rss redis "$RD_PID" "$RD_ADDR"
stop_server "$RD_PID" "$RD_WRAPPER"
fi

# --- 3. disk per stored domain and start-up time ----------------------------------------------
to_kind() {  # rewrites the loadgen's "throughput" line as a "load" line for one server
  sed -e "s/\"kind\":\"throughput\"/\"kind\":\"load\",\"server\":\"$1\",\"detail\":\"$DOMAINS domains, $LOAD_CONNS connections\"/"
}
load_and_restart() {
  local server=$1 name=$2 pid wrapper addr bytes i
  if [ "$server" = certline ]; then
    start_certline "$name" relaxed; pid=$CL_PID wrapper=$CL_WRAPPER addr=$CL_ADDR
  else
    start_redis "$name" everysec; pid=$RD_PID wrapper=$RD_WRAPPER addr=$RD_ADDR
  fi
  log "  loading $DOMAINS domains into $server"
  "$LG" --json --target "$server" --addr "$addr" --connections "$LOAD_CONNS" \
    --requests "$DOMAINS" --server-pid "$pid" | to_kind "$server" >>"$RAW"
  stop_server "$pid" "$wrapper"
  bytes=$(du -sb "$WORK/$name/data" | cut -f1)
  ls -lR "$WORK/$name/data" >"$OUT/files-$server.txt"
  printf '{"kind":"disk","server":"%s","detail":"%s domains","domains":%s,"bytes":%s}\n' \
    "$server" "$DOMAINS" "$DOMAINS" "$bytes" >>"$RAW"
  log "  $server: $bytes bytes on disk for $DOMAINS domains"
  for ((i = 1; i <= RESTARTS; i++)); do
    # Warm page cache: dropping it would disturb everything else on a shared machine.
    if [ "$server" = certline ]; then
      start_certline "$name" relaxed; pid=$CL_PID wrapper=$CL_WRAPPER
      local ms=$CL_START_MS
    else
      start_redis "$name" everysec; pid=$RD_PID wrapper=$RD_WRAPPER
      local ms=$RD_START_MS
    fi
    printf '{"kind":"startup","server":"%s","detail":"%s domains","domains":%s,"ms":%s}\n' \
      "$server" "$DOMAINS" "$DOMAINS" "$ms" >>"$RAW"
    log "  $server start-up with $DOMAINS domains: $ms ms"
    stop_server "$pid" "$wrapper"
  done
}
if want disk; then
  log "disk and start-up with $DOMAINS domains"
  load_and_restart certline load-certline
  load_and_restart redis load-redis
fi

# --- 4. sync calls per acknowledged write (durable / always) ---------------------------------
STRACE=(strace -f -c --seccomp-bpf -e 'trace=fsync,fdatasync,sync_file_range,msync')
# sync_calls FILE: total calls in an `strace -c` summary (the "total" line excluded)
sync_calls() {
  awk '$NF ~ /^(fsync|fdatasync|sync_file_range|msync)$/ { n += $4 } END { print n + 0 }' "$1"
}
sync_breakdown() {
  awk 'BEGIN { printf "{" } $NF ~ /^(fsync|fdatasync|sync_file_range|msync)$/ {
         printf "%s\"%s\":%d", sep, $NF, $4; sep = "," } END { printf "}" }' "$1"
}
traced_run() {  # traced_run SERVER NAME CONNS ACKS -> sets TR_FILE
  local server=$1 name=$2 conns=$3 acks=$4 pid wrapper addr
  TR_FILE=$WORK/$name.strace
  if [ "$server" = certline ]; then
    start_certline "$name" durable "${STRACE[@]}" -o "$TR_FILE"
    pid=$CL_PID wrapper=$CL_WRAPPER addr=$CL_ADDR
  else
    start_redis "$name" always "${STRACE[@]}" -o "$TR_FILE"
    pid=$RD_PID wrapper=$RD_WRAPPER addr=$RD_ADDR
  fi
  if [ "$acks" -gt 0 ]; then
    "$LG" --json --target "$server" --addr "$addr" --connections "$conns" \
      --requests "$acks" >"$WORK/$name.json"
  fi
  stop_server "$pid" "$wrapper"
}
if want syncs; then
log "sync calls per acknowledged write"
for server in certline redis; do
  traced_run "$server" "sync-$server-baseline" 1 0
  base=$(sync_calls "$TR_FILE")
  for conns in "${SYNC_CONNS[@]}"; do
    traced_run "$server" "sync-$server-$conns" "$conns" "$SYNC_ACKS"
    calls=$(sync_calls "$TR_FILE")
    acks=$SYNC_ACKS
    # certline also acknowledges one `command apikey` per connection (a durable write)
    [ "$server" = certline ] && acks=$((acks + conns))
    printf '{"kind":"syncs","server":"%s","detail":"%s connections","connections":%s,"acks":%s,"calls":%s,"baseline_calls":%s,"by_syscall":%s}\n' \
      "$server" "$conns" "$conns" "$acks" "$calls" "$base" "$(sync_breakdown "$TR_FILE")" >>"$RAW"
    log "  $server, $conns connections: $calls sync calls (start/stop alone: $base) for $acks acks"
  done
done
fi

# --- 5. certline on PostgreSQL, one and two instances (durable adds) vs Redis `always` --------
# Each instance count gets a fresh schema, dropped afterwards. The instances connect as a role
# of their own (certline_bench, created once, allowed to create schemas in the database) so
# that the load generator can tell their PostgreSQL backends from other clients' by the
# process title and add the backends' CPU to the servers' (`--db-postmaster`, `--db-user`).
PG_ROLE=certline_bench
psql_admin() { psql "$PG_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }
PG_SCHEMAS=()
drop_pg_schemas() {
  local s
  for s in "${PG_SCHEMAS[@]}"; do psql_admin -c "DROP SCHEMA IF EXISTS $s CASCADE" || true; done
  PG_SCHEMAS=()
}
pg_sweep() {
  local n=$1 i rep spec conns reqs warm order t schema addrs=() pids=() wrappers=()
  schema=bench_$$_${n}_$(date +%s)
  PG_SCHEMAS+=("$schema")
  log "pair pg$n: certline on PostgreSQL ($n instance(s), schema $schema) vs Redis appendfsync always"
  for ((i = 1; i <= n; i++)); do
    CL_EXTRA_CONFIG="[store]
backend = \"postgres\"
[store.postgres]
url_env = \"CERTLINE_BENCH_PG_URL\"
schema = \"$schema\"
instance = \"bench-$i\"
pool_size = 16" start_certline "pg$n-certline-$i" durable
    addrs+=(--addr "$CL_ADDR") pids+=(--server-pid "$CL_PID") wrappers+=("$CL_PID:$CL_WRAPPER")
  done
  start_redis "pg$n-redis" always
  local ra=$RD_ADDR rpid=$RD_PID
  for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then order="certline redis"; else order="redis certline"; fi
    for spec in "${SWEEP_REQS[@]}"; do
      conns=${spec%%:*}
      reqs=$(awk -v r="${spec#*:}" -v s="$SCALE" 'BEGIN { printf "%d", r * s }')
      warm=$((reqs / 10 > conns ? reqs / 10 : conns))
      for t in $order; do
        if [ "$t" = certline ]; then
          lg "pair=pg$n" "rep=$rep" "instances=$n" -- --target certline "${addrs[@]}" "${pids[@]}" \
            --db-postmaster "$PG_POSTMASTER" --db-user "$PG_TITLE_USER" \
            --connections "$conns" --requests "$reqs" --warmup "$warm"
        else
          lg "pair=pg$n" "rep=$rep" -- --target redis --addr "$ra" --server-pid "$rpid" \
            --connections "$conns" --requests "$reqs" --warmup "$warm"
        fi
      done
    done
  done
  for i in "${wrappers[@]}"; do stop_server "${i%%:*}" "${i#*:}"; done
  stop_server "$RD_PID" "$RD_WRAPPER"
  drop_pg_schemas
}
if want pg; then
  command -v psql >/dev/null || { echo "pg: psql is needed (apt-get install postgresql-client)" >&2; exit 1; }
  psql_admin -c "SELECT 1" >/dev/null ||
    { echo "pg: PostgreSQL at $PG_URL does not answer; start it (.ci/ensure-postgres)" >&2; exit 1; }
  PG_DB=$(psql_admin -c "SELECT current_database()")
  psql_admin <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN;
  END IF;
END \$\$;
GRANT CREATE ON DATABASE $PG_DB TO $PG_ROLE;
SQL
  PG_POSTMASTER=$(head -n 1 "$(psql_admin -c "SHOW data_directory")/postmaster.pid")
  # A backend's title is `postgres: [CLUSTER: ]USER DB HOST(PORT) ...` (Debian names its
  # clusters, e.g. 15/main).
  PG_CLUSTER=$(psql_admin -c "SHOW cluster_name")
  PG_TITLE_USER=${PG_CLUSTER:+$PG_CLUSTER: }$PG_ROLE
  # The same server and database, as the benchmark's role.
  export CERTLINE_BENCH_PG_URL
  CERTLINE_BENCH_PG_URL=$(sed -E "s#^(postgres(ql)?://)[^@/]*@#\1$PG_ROLE@#" <<<"$PG_URL")
  trap 'cleanup; drop_pg_schemas' EXIT
  pg_sweep 1
  pg_sweep 2
fi

# --- report -----------------------------------------------------------------------------------
{
  echo "# certline vs Redis, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  if [ "$CERTLINE" = "$ROOT/target/release/certline" ]; then
    echo "- certline: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo ' (modified)'), server code as of main $(git -C "$ROOT" merge-base HEAD main 2>/dev/null | cut -c1-7)"
  else
    echo "- certline: the binary $CERTLINE (--certline)"
  fi
  echo "- Redis: $(redis-server --version | grep -o 'v=[^ ]*')"
  echo "- machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), kernel $(uname -r)"
  echo "- disk: $(df -hT "$ROOT/target" | awk 'NR==2 {print $1, $2, $3}'); data under target/"
  echo "- mode: $([ "$QUICK" = 1 ] && echo quick || echo full), $REPS repetitions, $DOMAINS domains, scale $SCALE, parts $ONLY"
  echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores, shared)"
  echo
  "$LG" --report "$RAW" --report-json "$OUT/summary.json"
} >"$OUT/results.md"
cat "$OUT/results.md"
log "results: $OUT/results.md, raw: $RAW, summary: $OUT/summary.json"
