#!/usr/bin/env bash
# End-to-end cost of tower-bouncer's protected stack against plain baselines, on this
# machine, over loopback:
#
#   1. HTTP `Connection: close` requests/s (wrk): axum_server protected / --unprotected
#   2. HTTP keep-alive requests/s (wrk): the same two servers
#   3. server CPU per accepted-and-closed connection: bench_server protected / bare
#   4. server memory per live keep-alive connection: axum_server protected - --unprotected
#   5. server CPU per request under h2load, HTTP/1.1 and HTTP/2: bench/h2load.sh
#
# Each figure is the median over interleaved rounds of a per-round ratio (or
# difference): both sides run back to back in every round, so a change in the machine's
# load between rounds moves both and cancels out of the ratio, and the median drops the
# rounds that a burst of load hit on one side only. The order within a round alternates
# (A B, B A, A B, ...) so that neither side is always the one that runs second, right
# after the other's TIME_WAIT sockets and cache footprint.
#
# The machine is shared: other people's processes come and go. Before every round the
# script waits (boundedly) for the CPU to be quiet, measures during every run how much
# CPU went to processes other than its own, and runs a round again when that "foreign"
# load exceeded a threshold (boundedly too). Noisy rounds that remain are counted in the
# results, never dropped silently.
#
# Usage: bash bench/e2e.sh [--quick]     (from the repository root or anywhere)
# Writes: bench/results.md (the same tables as printed, plus every round's raw figures).
set -euo pipefail
shopt -s inherit_errexit

usage() {
  cat <<'EOF'
usage: bash bench/e2e.sh [--quick]
  --quick   3 rounds of 2 s runs instead of 7 rounds of 5 s: a smoke test of the script,
            not figures to quote
EOF
}

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "error: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

# Setup, before the measurements' deadline starts: a cold build takes minutes.
if [[ -z ${E2E_UNDER_TIMEOUT:-} ]]; then
  if ! command -v wrk >/dev/null || ! command -v haproxy >/dev/null || ! command -v h2load >/dev/null; then
    echo "installing wrk, haproxy and nghttp2-client (h2load)" >&2
    if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk haproxy nghttp2-client >&2
  fi
  command -v wrk >/dev/null || { echo "error: wrk is not installed and could not be installed" >&2; exit 1; }
  command -v haproxy >/dev/null || { echo "error: haproxy is not installed and could not be installed" >&2; exit 1; }
  command -v h2load >/dev/null || { echo "error: h2load is not installed and could not be installed" >&2; exit 1; }
  # Only the binaries the benchmarks run: building every example would also build
  # whatever unrelated example is half-written in the work tree.
  bench_build axum_server bench_server siege
fi

# The whole run is bounded: re-run this script under `timeout`, which sends SIGTERM at
# the deadline (and SIGKILL 60 s later, which the EXIT trap never needs: every wait is
# interruptible); the EXIT trap below then stops every process the script started.
# --foreground keeps the script in the terminal's process group, so Ctrl-C still works.
if [[ -z ${E2E_UNDER_TIMEOUT:-} ]]; then
  if ((QUICK)); then deadline=300; else deadline=570; fi
  export E2E_UNDER_TIMEOUT=$deadline
  exec timeout --foreground -k 60 "$deadline" bash "$0" "$@"
fi

if ((QUICK)); then
  ROUNDS=3            # quick mode checks that everything runs, not the figures
  WRK_SECONDS=2
  CHURN_CONNECTIONS=20000
  QUIET_WAIT=3        # seconds to wait for a quiet machine before a round, at most
  NOISE_BUDGET=10     # seconds per measurement for waiting and re-running, at most
  MODE_NAME="quick"
else
  ROUNDS=7            # odd, so the median is one round's figure, not an average of two
  WRK_SECONDS=5
  # Server CPU is read in clock ticks (10 ms): 50 000 connections at ~35 us each make
  # ~175 ticks a run, so one tick is well under 1 % of the figure.
  CHURN_CONNECTIONS=50000
  QUIET_WAIT=10
  NOISE_BUDGET=45
  MODE_NAME="full"
fi
# wrk: one thread, 32 connections. On 2 cores one wrk thread saturates one core and
# leaves the other (plus what wrk does not use) to the server's two tokio workers; with
# -t2 the client would take both cores and the figure would measure who wins the
# scheduler. 32 connections: enough in flight that the server always has a request to
# serve, and, with Connection: close, at most 32 connections in the accept queue, far
# below the listen backlog (1024), so no SYN is dropped and retried a second later,
# which would swamp the figure. (Trials at 8 to 128 connections showed no setting with
# a visibly smaller spread on this machine; the load of other users dominated it.)
# Nothing is pinned to a core: the servers size their runtimes to the machine (2
# workers), and pinning them to one core would measure a setup nobody deploys.
WRK_THREADS=1
WRK_CONNECTIONS=32
HOLD_CONNECTIONS=2000
CHURN_CONCURRENCY=64
# A run during which processes other than this script's used more than this much CPU
# (in cores, averaged over the run) is noisy; its round is run again, up to
# MAX_EXTRA_ROUNDS times per measurement and while the measurement has spent less than
# NOISE_BUDGET seconds waiting for quiet and re-running: on a machine that stays busy
# the script keeps its time bound and reports the noisy rounds it had to keep.
FOREIGN_MAX=0.25
MAX_EXTRA_ROUNDS=$ROUNDS
NOISE_SPENT=0
# The protected servers' admission limits, lifted so that a benchmark's own load is
# never refused (the defaults allow 20 new connections a second and 32 at once per
# peer, and every connection here comes from 127.0.0.1).
LIFTED=(--rate 100000000 --burst 100000000 --global-rate 100000000
  --max-per-peer 1000000 --max-connections 1000000)

BENCH_BIN=${CARGO_TARGET_DIR:-target}/bench-build/target/release/examples
AXUM=$BENCH_BIN/axum_server
BENCH=$BENCH_BIN/bench_server
RESULTS=bench/results.md
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tower-bouncer-e2e.XXXXXX")
STARTED=$EPOCHREALTIME

# --- processes: every server (and client) is a direct child, killed on exit ----------

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (deadline or SIGTERM)"; exit 143' TERM

# start_server NAME CMD...: starts CMD with quiet logs, waits (at most 10 s) for its
# `listening on IP:PORT` line, and sets SERVER_PID and SERVER_ADDR.
SERVER_SEQ=0
start_server() {
  local name=$1 line="" out err
  shift
  # Files of its own for every start: a file reused from an earlier start could still
  # hold that server's `listening on` line when it is first read.
  SERVER_SEQ=$((SERVER_SEQ + 1))
  out=$WORK/$name.$SERVER_SEQ.out err=$WORK/$name.$SERVER_SEQ.err
  RUST_LOG=error "$@" >"$out" 2>"$err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 200); do
    IFS= read -r line 2>/dev/null <"$out" || true
    [[ $line == "listening on "* ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  if [[ $line != "listening on "* ]]; then
    log "$name did not announce its port; its stderr:"
    cat "$err" >&2 || true
    die "cannot start $name"
  fi
  SERVER_ADDR=${line#listening on }
  [[ $SERVER_ADDR == 127.0.0.1:* ]] || die "$name listens on $SERVER_ADDR, not loopback"
}

# stop_server PID NAME: SIGTERM, up to 10 s to exit, then SIGKILL. An unclean exit is
# reported: the servers promise to exit cleanly on SIGTERM.
stop_server() {
  local pid=$1 name=$2 status=0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "warning: $name did not exit within 10 s of SIGTERM; killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || status=$?
  forget_pid "$pid"
  ((status == 0)) || log "warning: $name exited with status $status after SIGTERM"
}

# run_bounded OUT CMD...: runs CMD (already bounded in time by its own deadline or a
# `timeout`) with its output in OUT, and sets RUN_STATUS and RUN_TICKS (its CPU time in
# clock ticks). It runs in the background with a `wait`, which a signal interrupts, so
# that Ctrl-C or the deadline stop the script at once, and the EXIT trap stops CMD too.
run_bounded() {
  local out=$1 before pid
  shift
  children_ticks
  before=$CHILDREN_TICKS
  "$@" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  RUN_STATUS=0
  wait "$pid" || RUN_STATUS=$?
  forget_pid "$pid"
  children_ticks
  RUN_TICKS=$((CHILDREN_TICKS - before))
}

# --- measurements ------------------------------------------------------------------

# The foreign load of a run, in cores: machine busy time minus our tasks' CPU time
# (both in ticks) over the wall time.
foreign_cores() {
  local busy=$1 ours=$2 seconds=$3
  awk -v b="$busy" -v o="$ours" -v s="$seconds" -v hz="$CLK_TCK" \
    'BEGIN { f = (b - o) / hz / s; if (f < 0) f = 0; printf "%.2f", f }'
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# Waits, at most QUIET_WAIT seconds, for a second in which the machine is mostly idle:
# our servers are idle between runs, so any load then is someone else's.
wait_quiet() {
  local waited=0 before after load
  while ((waited < QUIET_WAIT && NOISE_SPENT < NOISE_BUDGET)); do
    before=$(machine_busy)
    sleep 1
    after=$(machine_busy)
    load=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }')
    awk -v l="$load" -v m="$FOREIGN_MAX" 'BEGIN { exit !(l <= m) }' && return 0
    ((waited == 0)) && log "    waiting for a quieter machine (load ${load} cores)"
    waited=$((waited + 1)) NOISE_SPENT=$((NOISE_SPENT + 1))
  done
}

# wrk_run PID ADDR close|keepalive: one wrk run against the server PID listening on
# ADDR. Sets WRK_RESULT to "rps requests server_ticks foreign_cores".
wrk_run() {
  local pid=$1 addr=$2 kind=$3 out=$WORK/wrk.out
  local args=(-t"$WRK_THREADS" -c"$WRK_CONNECTIONS" -d"${WRK_SECONDS}s" --timeout 5s)
  [[ $kind == close ]] && args+=(-H 'Connection: close')
  local t0 busy0 server0 seconds busy1 server1
  t0=$EPOCHREALTIME busy0=$(machine_busy) server0=$(proc_ticks "$pid")
  run_bounded "$out" timeout $((WRK_SECONDS + 30)) wrk "${args[@]}" "http://$addr/"
  seconds=$(elapsed_since "$t0") busy1=$(machine_busy) server1=$(proc_ticks "$pid")
  ((RUN_STATUS == 0)) || { cat "$out" >&2; die "wrk failed (status $RUN_STATUS)"; }
  # Any non-2xx answer means a limit refused the benchmark's own load: the figures
  # would measure refusals, not service.
  if grep -q 'Non-2xx' "$out"; then
    cat "$out" >&2
    die "wrk got non-2xx responses from $addr: are the limits lifted?"
  fi
  if grep -q 'Socket errors' "$out"; then
    log "    note: $(grep 'Socket errors' "$out" | sed 's/^ *//')"
  fi
  local rps requests
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  requests=$(awk '/requests in/ { print $1 }' "$out")
  [[ -n $rps && -n $requests ]] || { cat "$out" >&2; die "cannot read wrk's output"; }
  WRK_RESULT="$rps $requests $((server1 - server0)) $(foreign_cores $((busy1 - busy0)) \
    $((server1 - server0 + RUN_TICKS)) "$seconds")"
}

# churn_run PID ADDR: opens and closes CHURN_CONNECTIONS connections to the server PID.
# Sets CHURN_RESULT to "server_ticks server_ns connections_per_second foreign_cores".
churn_run() {
  local pid=$1 addr=$2 out=$WORK/churn.out t0 busy0 seconds busy1
  t0=$EPOCHREALTIME busy0=$(machine_busy)
  run_bounded "$out" "$BENCH" --mode churn --target "$addr" \
    --connections "$CHURN_CONNECTIONS" --concurrency "$CHURN_CONCURRENCY" \
    --server-pid "$pid" --deadline 120
  seconds=$(elapsed_since "$t0") busy1=$(machine_busy)
  ((RUN_STATUS == 0)) || { cat "$out" >&2; die "the churn client failed (status $RUN_STATUS)"; }
  local ticks ns per_second
  ticks=$(sed -n 's/.*server_ticks=\([0-9]*\).*/\1/p' "$out")
  ns=$(sed -n 's/.*server_cpu_ns=\([0-9]*\).*/\1/p' "$out")
  per_second=$(sed -n 's/.*per_second=\([0-9]*\).*/\1/p' "$out")
  [[ -n $ticks && -n $ns ]] || { cat "$out" >&2; die "cannot read the churn client's output"; }
  # The server's ticks as the client read them: they miss the settle time after the
  # last connection, when the server is idle.
  CHURN_RESULT="$ticks $ns $per_second $(foreign_cores $((busy1 - busy0)) \
    $((ticks + RUN_TICKS)) "$seconds")"
}

# hold_run NAME CMD...: starts a fresh server, holds HOLD_CONNECTIONS answered
# keep-alive connections on it, stops it, and sets HOLD_RESULT to the bytes of VmRSS
# per connection. A fresh process per run, so that memory freed by an earlier run
# cannot be reused and hide what the connections cost.
hold_run() {
  local name=$1 out=$WORK/hold.out
  shift
  start_server "$name" "$@"
  run_bounded "$out" "$BENCH" --mode hold --target "$SERVER_ADDR" \
    --connections "$HOLD_CONNECTIONS" --concurrency 64 --server-pid "$SERVER_PID" --deadline 60
  stop_server "$SERVER_PID" "$name"
  ((RUN_STATUS == 0)) || { cat "$out" >&2; die "the hold client failed against $name"; }
  local before after
  before=$(sed -n 's/.*rss_before_kib=\([0-9]*\).*/\1/p' "$out")
  after=$(sed -n 's/.*rss_after_kib=\([0-9]*\).*/\1/p' "$out")
  [[ -n $before && -n $after ]] || { cat "$out" >&2; die "cannot read the hold client's output"; }
  HOLD_RESULT=$(awk -v b="$before" -v a="$after" -v n="$HOLD_CONNECTIONS" \
    'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
# retry_allowed EXTRA: whether a noisy round may be run again.
retry_allowed() { (($1 < MAX_EXTRA_ROUNDS && NOISE_SPENT < NOISE_BUDGET)); }
# spend_since T0: charges the time since T0 (a discarded round) to the noise budget.
spend_since() {
  NOISE_SPENT=$((NOISE_SPENT + $(awk -v a="$1" -v b="$EPOCHREALTIME" \
    'BEGIN { d = b - a; printf "%d", (d == int(d)) ? d : int(d) + 1 }')))
}

# Raw figures, one line per run, for the appendix of the results.
RAW=$WORK/raw.md
: >"$RAW"
raw() { printf '%s\n' "$*" >>"$RAW"; }

# --- the machine ---------------------------------------------------------------

MACHINE=$WORK/machine.md
{
  echo "# End-to-end benchmark results"
  echo
  echo "Produced by \`bash bench/e2e.sh$( ((QUICK)) && echo ' --quick')\` ($MODE_NAME mode) on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "- CPUs (nproc): $(nproc)"
  echo "- CPU model: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "- kernel: $(uname -sr) ($(uname -m))"
  echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "- load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- rustc: $(rustc --version)"
  echo "- wrk: $(wrk -v 2>&1 | head -1 | awk '{ print $1, $2 }')"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo ' (src/ modified in the work tree)')"
  echo "- settings: $ROUNDS rounds; wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d${WRK_SECONDS}s;" \
    "$CHURN_CONNECTIONS connections per churn run ($CHURN_CONCURRENCY at a time);" \
    "$HOLD_CONNECTIONS held connections; a run is noisy above $FOREIGN_MAX cores of foreign load"
} >"$MACHINE"
cat "$MACHINE"
echo

# Rows of the results tables, filled in as the measurements finish.
ROWS=()
SUPPORT=()

# A verdict from noisy rounds is marked so: on a busy machine, requests/s measure the
# scheduler's share as much as the server.
noisy_tag() { if (($1 > 0)); then echo " (noisy)"; fi; }

# pass VALUE OP TARGET: "yes" or "**no**".
pass() { awk -v v="$1" -v t="$3" -v op="$2" 'BEGIN {
  ok = (op == ">=") ? (v >= t) : (v <= t); print ok ? "yes" : "**no**" }'; }

# --- 1 and 2: HTTP requests/s ------------------------------------------------------

start_server axum-unprotected "$AXUM" --unprotected
BASE_PID=$SERVER_PID BASE_ADDR=$SERVER_ADDR
start_server axum-protected "$AXUM" "${LIFTED[@]}"
PROT_PID=$SERVER_PID PROT_ADDR=$SERVER_ADDR

# http_bench close|keepalive TARGET "what": the rounds of one wrk comparison.
http_bench() {
  local kind=$1 target=$2 what=$3
  local ratios=() cpu_ratios=() base_rps=() prot_rps=() noisy_kept=0 extra=0 round=0
  local round_t0
  NOISE_SPENT=0
  log "== $what: $ROUNDS rounds"
  # Warm-up, not counted: first connections fault in code, buffers and allocator arenas.
  wrk_run "$BASE_PID" "$BASE_ADDR" "$kind"
  wrk_run "$PROT_PID" "$PROT_ADDR" "$kind"
  while ((${#ratios[@]} < ROUNDS)); do
    round=$((round + 1))
    wait_quiet
    round_t0=$EPOCHREALTIME
    local b p first
    if ((round % 2)); then
      first=unprotected
      wrk_run "$BASE_PID" "$BASE_ADDR" "$kind"
      b=$WRK_RESULT
      wrk_run "$PROT_PID" "$PROT_ADDR" "$kind"
      p=$WRK_RESULT
    else
      first=protected
      wrk_run "$PROT_PID" "$PROT_ADDR" "$kind"
      p=$WRK_RESULT
      wrk_run "$BASE_PID" "$BASE_ADDR" "$kind"
      b=$WRK_RESULT
    fi
    local brps breq bticks bforeign prps preq pticks pforeign
    read -r brps breq bticks bforeign <<<"$b"
    read -r prps preq pticks pforeign <<<"$p"
    local r cpu_r=n/a
    r=$(ratio "$prps" "$brps")
    if ((bticks > 0 && breq > 0 && preq > 0)); then
      cpu_r=$(awk -v pt="$pticks" -v pr="$preq" -v bt="$bticks" -v br="$breq" \
        'BEGIN { printf "%.3f", (pt / pr) / (bt / br) }')
    fi
    local flag=""
    if noisy "$bforeign" || noisy "$pforeign"; then
      if retry_allowed "$extra"; then
        extra=$((extra + 1))
        spend_since "$round_t0"
        log "  round $round: noisy (foreign load ${bforeign}/${pforeign} cores), run again"
        raw "| $what | $round | $first | $brps | $prps | $r | $cpu_r | $bforeign / $pforeign | discarded: noisy, run again |"
        continue
      fi
      noisy_kept=$((noisy_kept + 1))
      flag="noisy, kept (retries used up)"
    fi
    ratios+=("$r") base_rps+=("$brps") prot_rps+=("$prps")
    [[ $cpu_r != n/a ]] && cpu_ratios+=("$cpu_r")
    log "  round $round ($first first): unprotected $brps req/s, protected $prps req/s," \
      "ratio $r, server CPU/request ratio $cpu_r, foreign load ${bforeign}/${pforeign} cores"
    raw "| $what | $round | $first | $brps | $prps | $r | $cpu_r | $bforeign / $pforeign | $flag |"
  done
  local med note=""
  med=$(median "${ratios[@]}")
  ((noisy_kept > 0)) && note=", $noisy_kept noisy rounds kept"
  ROWS+=("| $what | \`axum_server --unprotected\` | $med (rounds: $(range "${ratios[@]}")$note) | >= $target | $(pass "$med" '>=' "$target")$(noisy_tag "$noisy_kept") | $(median "${prot_rps[@]}") vs $(median "${base_rps[@]}") |")
  if ((${#cpu_ratios[@]} > 0)); then
    SUPPORT+=("| $what: server CPU per request, protected / unprotected | $(median "${cpu_ratios[@]}") (rounds: $(range "${cpu_ratios[@]}")) |")
  fi
}

RAW_HEADER_HTTP="| measurement | round | first | baseline | protected | ratio | CPU/request ratio | foreign load (cores, baseline / protected) | note |"
raw "### HTTP requests/s (wrk)"
raw ""
raw "$RAW_HEADER_HTTP"
raw "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
http_bench close 0.95 "HTTP Connection: close, requests/s"
http_bench keepalive 0.98 "HTTP keep-alive, requests/s"

stop_server "$BASE_PID" axum-unprotected
stop_server "$PROT_PID" axum-protected

# --- 3: server CPU per accepted-and-closed connection ------------------------------

start_server bench-bare "$BENCH" --mode bare
BARE_PID=$SERVER_PID BARE_ADDR=$SERVER_ADDR
start_server bench-protected "$BENCH" --mode protected
PROT_PID=$SERVER_PID PROT_ADDR=$SERVER_ADDR

raw ""
raw "### Accept and close: server CPU (bench_server)"
raw ""
raw "| round | first | bare ticks | protected ticks | ratio (ticks) | ratio (schedstat ns) | bare / protected us per conn | foreign load (cores, bare / protected) | note |"
raw "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
log "== accept-and-close server CPU: $ROUNDS rounds of $CHURN_CONNECTIONS connections"
CHURN_WARMUP=$((CHURN_CONNECTIONS / 10))
for addr in "$BARE_ADDR" "$PROT_ADDR"; do
  run_bounded "$WORK/warmup.out" "$BENCH" --mode churn --target "$addr" \
    --connections "$CHURN_WARMUP" --deadline 60
  ((RUN_STATUS == 0)) || { cat "$WORK/warmup.out" >&2; die "the warm-up churn failed"; }
done
ratios=() ns_ratios=() bare_us=() prot_us=() noisy_kept=0 extra=0 round=0
NOISE_SPENT=0
while ((${#ratios[@]} < ROUNDS)); do
  round=$((round + 1))
  wait_quiet
  round_t0=$EPOCHREALTIME
  if ((round % 2)); then
    first=bare
    churn_run "$BARE_PID" "$BARE_ADDR"
    b=$CHURN_RESULT
    churn_run "$PROT_PID" "$PROT_ADDR"
    p=$CHURN_RESULT
  else
    first=protected
    churn_run "$PROT_PID" "$PROT_ADDR"
    p=$CHURN_RESULT
    churn_run "$BARE_PID" "$BARE_ADDR"
    b=$CHURN_RESULT
  fi
  read -r bticks bns brate bforeign <<<"$b"
  read -r pticks pns prate pforeign <<<"$p"
  r=$(ratio "$pticks" "$bticks")
  nr=$(ratio "$pns" "$bns")
  bu=$(awk -v n="$bns" -v c="$CHURN_CONNECTIONS" 'BEGIN { printf "%.1f", n / c / 1000 }')
  pu=$(awk -v n="$pns" -v c="$CHURN_CONNECTIONS" 'BEGIN { printf "%.1f", n / c / 1000 }')
  flag=""
  if noisy "$bforeign" || noisy "$pforeign"; then
    if retry_allowed "$extra"; then
      extra=$((extra + 1))
      spend_since "$round_t0"
      log "  round $round: noisy (foreign load ${bforeign}/${pforeign} cores), run again"
      raw "| $round | $first | $bticks | $pticks | $r | $nr | $bu / $pu | $bforeign / $pforeign | discarded: noisy, run again |"
      continue
    fi
    noisy_kept=$((noisy_kept + 1))
    flag="noisy, kept (retries used up)"
  fi
  ratios+=("$r") ns_ratios+=("$nr") bare_us+=("$bu") prot_us+=("$pu")
  log "  round $round ($first first): bare $bticks ticks (${bu} us/conn, $brate conn/s)," \
    "protected $pticks ticks (${pu} us/conn, $prate conn/s), ratio $r (schedstat $nr)," \
    "foreign load ${bforeign}/${pforeign} cores"
  raw "| $round | $first | $bticks | $pticks | $r | $nr | $bu / $pu | $bforeign / $pforeign | $flag |"
done
med=$(median "${ratios[@]}")
note=""
((noisy_kept > 0)) && note=", $noisy_kept noisy rounds kept"
ROWS+=("| accept and close: server CPU (utime+stime) per connection | \`bench_server --mode bare\` | $med (rounds: $(range "${ratios[@]}")$note) | <= 1.03 | $(pass "$med" '<=' 1.03)$(noisy_tag "$noisy_kept") | $(median "${prot_us[@]}") us vs $(median "${bare_us[@]}") us per connection |")
SUPPORT+=("| accept and close: server on-CPU time from schedstat (ns), protected / bare | $(median "${ns_ratios[@]}") (rounds: $(range "${ns_ratios[@]}")) |")
stop_server "$BARE_PID" bench-bare
stop_server "$PROT_PID" bench-protected

# --- 4: memory per live keep-alive connection --------------------------------------

raw ""
raw "### Memory per held keep-alive connection (VmRSS, $HOLD_CONNECTIONS connections)"
raw ""
raw "| round | first | unprotected B/conn | protected B/conn | difference |"
raw "| --- | --- | --- | --- | --- |"
log "== memory per live keep-alive connection: $ROUNDS rounds of $HOLD_CONNECTIONS connections"
diffs=() base_b=() prot_b=()
for round in $(seq "$ROUNDS"); do
  # Memory does not depend on the CPU being quiet: no waiting, no re-runs.
  if ((round % 2)); then
    first=unprotected
    hold_run axum-unprotected "$AXUM" --unprotected
    b=$HOLD_RESULT
    hold_run axum-protected "$AXUM" "${LIFTED[@]}"
    p=$HOLD_RESULT
  else
    first=protected
    hold_run axum-protected "$AXUM" "${LIFTED[@]}"
    p=$HOLD_RESULT
    hold_run axum-unprotected "$AXUM" --unprotected
    b=$HOLD_RESULT
  fi
  d=$((p - b))
  diffs+=("$d") base_b+=("$b") prot_b+=("$p")
  log "  round $round ($first first): unprotected $b B/conn, protected $p B/conn, difference $d B"
  raw "| $round | $first | $b | $p | $d |"
done
med=$(median "${diffs[@]}")
ROWS+=("| memory (VmRSS) per live keep-alive connection, protected - unprotected | \`axum_server --unprotected\` (hyper) | $med B (rounds: $(range "${diffs[@]}")) | <= +512 B | $(pass "$med" '<=' 512) | $(median "${prot_b[@]}") B vs $(median "${base_b[@]}") B per connection |")

# --- report ------------------------------------------------------------------------

{
  cat "$MACHINE"
  echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg); took $(elapsed_since "$STARTED" | cut -d. -f1) s"
  echo
  echo "Each figure is the median over $ROUNDS interleaved rounds of the per-round ratio"
  echo "(or difference); the range of the rounds follows it."
  echo
  echo "| what | baseline | median ratio (or bytes) | target | met? | medians, protected vs baseline |"
  echo "| --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Supporting figures (no target):"
  echo
  echo "| what | median |"
  echo "| --- | --- |"
  printf '%s\n' "${SUPPORT[@]}"
  echo
  echo "## Every round"
  echo
  echo "Foreign load: CPU used by processes other than this benchmark's during the run, in"
  echo "cores. Rounds above $FOREIGN_MAX are run again (at most $MAX_EXTRA_ROUNDS times and"
  echo "$NOISE_BUDGET s of waiting and re-running per measurement) and listed here as"
  echo "discarded; a noisy round kept once that budget is spent is marked so."
  echo
  cat "$RAW"
} >"$WORK/results.md"

# Server CPU per request under h2load, the same two servers: HTTP/1.1 and HTTP/2.
log "== server CPU per request under h2load (bench/h2load.sh)"
if ((QUICK)); then h2load_length=(--rounds 2 --requests 20000); else h2load_length=(); fi
h2load_out=$WORK/h2load.txt
run_bounded "$h2load_out" timeout 150 bash bench/h2load.sh --server "$AXUM" "${h2load_length[@]}"
if ((RUN_STATUS == 0)); then
  {
    echo
    echo "## Server CPU per request under h2load"
    echo
    echo "\`bench/h2load.sh\`: h2load on one CPU and the servers on the others (see the script"
    echo "for why)."
    echo
    sed -n '/^Server CPU time/,$p' "$h2load_out"
    echo
    echo '```text'
    grep -e '^== ' -e '^  round ' "$h2load_out"
    echo '```'
  } >>"$WORK/results.md"
else
  log "warning: bench/h2load.sh did not finish (status $RUN_STATUS); its section is left out"
  tail -n 20 "$h2load_out" >&2
fi

# The siege's HTTP attacks against the same app, unprotected, protected, and behind
# HAProxy with its nearest equivalents: what an operator would use instead.
log "== the siege's attacks, unprotected, protected and behind HAProxy"
if ((QUICK)); then siege_length=--quick; else siege_length=; fi
siege_out=$WORK/siege.txt
run_bounded "$siege_out" timeout 240 "$BENCH_BIN"/siege --haproxy ${siege_length:+"$siege_length"}
# Status 3: the siege finished, but the protected server failed its legitimate client in
# some attack. Its section is kept (its verdict says which attack), and the script fails
# once the results are written.
siege_status=$RUN_STATUS
if ((siege_status == 0 || siege_status == 3)); then
  {
    echo
    echo "## The siege, also behind HAProxy"
    echo
    echo "\`siege --haproxy\`: each HTTP attack against axum_server unprotected, protected, and"
    echo "unprotected behind HAProxy (maxconn, a stick table tracking conn_cur, conn_rate and"
    echo "http_err_rate per source, timeout client / http-request / http-keep-alive)."
    echo
    echo '```text'
    sed -n '/^| attack/,/^(took/p' "$siege_out"
    echo '```'
  } >>"$WORK/results.md"
else
  log "warning: the siege did not finish (status $siege_status); its section is left out"
fi

mkdir -p bench
cp "$WORK/results.md" "$RESULTS"
echo
sed -n '/^Each figure/,/^## Every round/p' "$RESULTS" | sed '$d'
sed -n '/^## \(Server CPU per request under h2load\|The siege, also behind HAProxy\)/,$p' "$RESULTS"
log "written to $RESULTS"
if ((siege_status == 3)); then
  die "the protected server did not keep serving its legitimate client in the siege: $(grep '^The protected server' "$siege_out")"
fi
