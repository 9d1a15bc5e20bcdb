#!/usr/bin/env bash
# Server CPU per HTTP request, protected against unprotected, under load from h2load
# (Debian `nghttp2-client`), for two workloads:
#
#   HTTP/1.1 keep-alive  h2load --h1 -c 32 -n REQUESTS        (32 connections)
#   HTTP/2 cleartext     h2load -c 8 -m 16 -n REQUESTS        (8 connections x 16 streams,
#                        prior knowledge: the servers detect the HTTP/2 preface)
#
# Both axum_server processes (the protected one with its admission limits lifted, so
# that the load's own 127.0.0.1 connections are never refused, and `--unprotected`) run
# for the whole script. Each run reads the server's on-CPU time before h2load starts
# and after it ends, and divides by the requests h2load reports as succeeded; a run with
# any failed, errored or non-2xx request stops the script. The on-CPU time is the
# scheduler's nanosecond count summed over the server's threads (schedstat); the same
# ratio from utime+stime (/proc/PID/stat, in clock ticks) is printed beside it as a
# check. The rounds interleave the two servers, the order alternating (plain then
# protected, protected then plain, ...), so that a change in the machine's load moves
# both sides of a round; the ratio reported is the median of the rounds' ratios.
#
# By default h2load runs on one CPU and the servers on the other CPUs, so their tokio
# runtimes size themselves to those (one worker on a 2-core machine) and each worker is
# kept busy by the load. Unpinned, on 2 cores, the server's two workers share the cores
# with h2load: they park, wake and steal work from each other, and the per-request CPU
# moves with how the scheduler placed the three threads. Measured on a 2-core VM, four
# runs of each: the split ratios spread over 0.04 to 0.05 from run to run (rounds within
# a run 0.03 to 0.07), unpinned over 0.15 (rounds within a run up to 0.35).
#
# The machine may be shared: during every run the script measures the CPU that
# processes other than its own used, and runs a round again (at most ROUNDS times) when
# that exceeded 0.25 cores. Noisy rounds kept once the retries are used up are counted.
#
# Usage: bash bench/h2load.sh [--server PATH] [--rounds N] [--requests N] [--pin MODE]
#   --server PATH  measure this axum_server binary instead of building the current one
#                  (to compare two versions)
#   --rounds N     interleaved rounds per workload (default 4)
#   --requests N   requests per run (default 100000)
#   --pin MODE     split (default): h2load on the first CPU allowed, the servers on
#                  the others; client: h2load pinned there, the servers anywhere;
#                  none: nothing pinned
# Prints a markdown table on stdout; progress and every round go to stderr. Installs
# h2load (`apt-get install nghttp2-client`) if it is missing and the script runs as root.
set -euo pipefail
shopt -s inherit_errexit

SERVER=
ROUNDS=4
REQUESTS=100000
PIN='split'
while (($#)); do
  case $1 in
    --server) SERVER=${2:?--server needs a path}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --requests) REQUESTS=${2:?--requests needs a number}; shift 2 ;;
    --pin) PIN=${2:?--pin needs client, split or none}; shift 2 ;;
    -h | --help) sed -n '2,41p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "error: --rounds must be a positive integer" >&2; exit 2; }
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || { echo "error: --requests must be a positive integer" >&2; exit 2; }
[[ $PIN =~ ^(client|split|none)$ ]] || { echo "error: --pin must be client, split or none" >&2; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

if ! command -v h2load >/dev/null; then
  [[ $(id -u) -eq 0 ]] || die "h2load is not installed: apt-get install nghttp2-client (as root)"
  log "installing nghttp2-client (h2load)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >&2
  command -v h2load >/dev/null || die "h2load is still missing after installing nghttp2-client"
fi
# The CPUs this script may run on, one per line, from its own affinity list (0-3,6).
allowed_cpus() {
  local ranges range
  ranges=$(awk '/^Cpus_allowed_list:/ { print $2 }' /proc/self/status)
  for range in ${ranges//,/ }; do seq "${range%-*}" "${range#*-}"; done
}
CPUS=()
if [[ $PIN != none ]]; then
  command -v taskset >/dev/null || die "taskset (util-linux) is needed for --pin $PIN"
  mapfile -t CPUS < <(allowed_cpus)
  ((${#CPUS[@]} >= 2)) || die "--pin $PIN needs at least 2 CPUs; use --pin none"
fi
if [[ -z $SERVER ]]; then
  bench_build axum_server
  SERVER=$BENCH_BIN/axum_server
fi
[[ -x $SERVER ]] || die "$SERVER is not an executable"

# The CPUs h2load and the servers may use (see the top of the script): h2load runs one
# thread (-t 1), so one CPU is all it can use; it gets the first allowed one.
CLIENT_CPUS=()
SERVER_CPUS=()
case $PIN in
  client) CLIENT_CPUS=(taskset -c "${CPUS[0]}") ;;
  split)
    CLIENT_CPUS=(taskset -c "${CPUS[0]}")
    SERVER_CPUS=(taskset -c "$(IFS=,; echo "${CPUS[*]:1}")")
    ;;
esac

# The protected server's admission limits, lifted so that the load's own connections
# (all from 127.0.0.1) are never refused.
LIFTED=(--rate 100000000 --burst 100000000 --global-rate 100000000
  --max-per-peer 1000000 --max-connections 1000000)
FOREIGN_MAX=0.25
RUN_TIMEOUT=120
CLK_TCK=$(getconf CLK_TCK)
STARTED=$EPOCHREALTIME
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tower-bouncer-h2load.XXXXXX")

# --- processes: every server (and client) is a direct child, killed on exit ----------

trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "stopped (SIGTERM)"; exit 143' TERM

# start_server NAME FLAGS...: starts the server on a free 127.0.0.1 port, waits (at
# most 10 s) for its `listening on IP:PORT` line, and sets SERVER_PID and SERVER_ADDR.
start_server() {
  local name=$1 line="" out=$WORK/$1.out err=$WORK/$1.err
  shift
  RUST_LOG=error "${SERVER_CPUS[@]}" "$SERVER" --addr 127.0.0.1:0 "$@" >"$out" 2>"$err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 200); do
    IFS= read -r line 2>/dev/null <"$out" || true
    [[ $line == "listening on "* ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  [[ $line == "listening on "* ]] || { cat "$err" >&2; die "cannot start $name"; }
  SERVER_ADDR=${line#listening on }
  [[ $SERVER_ADDR == 127.0.0.1:* ]] || die "$name listens on $SERVER_ADDR, not loopback"
}

# On-CPU time of a process's live threads, in nanoseconds (the scheduler's own count in
# /proc/PID/task/*/schedstat), then the number of threads. Clock ticks are too coarse
# here: on this machine a run of 100 000 requests costs the server 30 to 60 ticks, so
# one tick of rounding is 2 to 3 % of the figure. A thread that exits during a run
# would take its time with it: the thread count is compared before and after.
proc_ns() {
  local pid=$1 files
  files=("/proc/$pid/task/"*/schedstat)
  cat "${files[@]}" 2>/dev/null | awk '{ s += $1; n++ } END { printf "%.0f %d\n", s, n }'
}

# h2load_run PID ADDR h1|h2 REQUESTS: one bounded h2load run against the server PID
# listens at ADDR. Sets RUN_RESULT to "US_PER_REQUEST REQ_PER_S FOREIGN_CORES
# TICK_US_PER_REQUEST": the server's on-CPU time per request from schedstat, h2load's
# requests/s, other processes' load in cores, and the server's utime+stime per request.
h2load_run() {
  local pid=$1 addr=$2 workload=$3 requests=$4 out=$WORK/h2load.out
  local args protocol
  case $workload in
    h1) args=(--h1 -c 32) protocol=http/1.1 ;;
    h2) args=(-c 8 -m 16) protocol=h2c ;;
  esac
  local t0 busy0 server0 client0 client_pid status=0
  children_ticks
  client0=$CHILDREN_TICKS
  local ns0 threads0
  read -r ns0 threads0 < <(proc_ns "$pid")
  t0=$EPOCHREALTIME busy0=$(machine_busy) server0=$(proc_ticks "$pid")
  # In the background with a `wait`, which a signal interrupts: Ctrl-C stops at once.
  timeout -k 5 "$RUN_TIMEOUT" "${CLIENT_CPUS[@]}" h2load -t 1 "${args[@]}" -n "$requests" \
    "http://$addr/" >"$out" 2>&1 &
  client_pid=$!
  PIDS+=("$client_pid")
  wait "$client_pid" || status=$?
  forget_pid "$client_pid"
  local server1 busy1 seconds client
  server1=$(proc_ticks "$pid") busy1=$(machine_busy)
  local ns1 threads1
  read -r ns1 threads1 < <(proc_ns "$pid")
  seconds=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')
  children_ticks
  client=$((CHILDREN_TICKS - client0))
  ((status == 0)) || { cat "$out" >&2; die "h2load failed (status $status; 124 is the ${RUN_TIMEOUT} s timeout)"; }
  grep -qx "Application protocol: $protocol" "$out" || { cat "$out" >&2; die "h2load did not speak $protocol"; }
  # requests: 100000 total, 100000 started, 100000 done, 100000 succeeded, 0 failed, 0 errored, 0 timeout
  # status codes: 100000 2xx, 0 3xx, 0 4xx, 0 5xx
  local total succeeded failed errored timedout ok2xx rps
  read -r total succeeded failed errored timedout < <(awk '/^requests: / {
    print $2, $8, $10, $12, $14 }' "$out")
  ok2xx=$(awk '/^status codes: / { print $3 }' "$out")
  rps=$(awk '/^finished in / { print $4 }' "$out")
  [[ -n $total && -n $ok2xx && -n $rps ]] || { cat "$out" >&2; die "cannot read h2load's output"; }
  if ((total != requests || succeeded != requests || failed || errored || timedout || ok2xx != succeeded)); then
    cat "$out" >&2
    die "not every request succeeded with a 2xx (see h2load's output above)"
  fi
  ((threads0 == threads1)) || die "the server's thread count went from $threads0 to $threads1 during a run"
  RUN_RESULT=$(awk -v ns=$((ns1 - ns0)) -v t=$((server1 - server0)) -v n="$succeeded" \
    -v hz="$CLK_TCK" -v rps="$rps" -v b=$((busy1 - busy0)) -v c="$client" -v s="$seconds" 'BEGIN {
    f = (b - t - c) / hz / s; if (f < 0) f = 0
    printf "%.3f %.0f %.2f %.3f", ns / 1000 / n, rps, f, t / hz * 1e6 / n }')
}

# --- the rounds --------------------------------------------------------------------

start_server unprotected --unprotected
PLAIN_PID=$SERVER_PID PLAIN_ADDR=$SERVER_ADDR
start_server protected "${LIFTED[@]}"
PROT_PID=$SERVER_PID PROT_ADDR=$SERVER_ADDR
log "unprotected on $PLAIN_ADDR, protected on $PROT_ADDR; h2load $(h2load --version | awk '{ print $2; exit }'), pin: $PIN"

ROWS=()
for workload in h1 h2; do
  case $workload in
    h1) what="HTTP/1.1 keep-alive, 32 connections" flags="--h1 -c 32" ;;
    h2) what="HTTP/2 (h2c), 8 connections x 16 streams" flags="-c 8 -m 16" ;;
  esac
  log "== $what: $ROUNDS rounds of $REQUESTS requests"
  # Warm-up, not counted: the first connections fault in code, buffers and arenas.
  h2load_run "$PLAIN_PID" "$PLAIN_ADDR" "$workload" $((REQUESTS / 10 + 1))
  h2load_run "$PROT_PID" "$PROT_ADDR" "$workload" $((REQUESTS / 10 + 1))
  ratios=() tick_ratios=() plain_us=() prot_us=() round=0 extra=0 noisy_kept=0
  while ((${#ratios[@]} < ROUNDS)); do
    round=$((round + 1))
    if ((round % 2)); then
      first=unprotected
      h2load_run "$PLAIN_PID" "$PLAIN_ADDR" "$workload" "$REQUESTS"
      b=$RUN_RESULT
      h2load_run "$PROT_PID" "$PROT_ADDR" "$workload" "$REQUESTS"
      p=$RUN_RESULT
    else
      first=protected
      h2load_run "$PROT_PID" "$PROT_ADDR" "$workload" "$REQUESTS"
      p=$RUN_RESULT
      h2load_run "$PLAIN_PID" "$PLAIN_ADDR" "$workload" "$REQUESTS"
      b=$RUN_RESULT
    fi
    read -r bus brps bforeign btus <<<"$b"
    read -r pus prps pforeign ptus <<<"$p"
    r=$(awk -v a="$pus" -v b="$bus" 'BEGIN { printf "%.3f", a / b }')
    tr=$(awk -v a="$ptus" -v b="$btus" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
    detail="unprotected $bus us/req (ticks: $btus, $brps req/s), protected $pus us/req (ticks: $ptus, $prps req/s), ratio $r (ticks: $tr), foreign load $bforeign/$pforeign cores"
    if noisy "$bforeign" || noisy "$pforeign"; then
      if ((extra < ROUNDS)); then
        extra=$((extra + 1))
        log "  round $round ($first first): $detail: noisy, run again"
        continue
      fi
      noisy_kept=$((noisy_kept + 1))
      detail+=" (noisy, kept: retries used up)"
    fi
    ratios+=("$r") tick_ratios+=("$tr") plain_us+=("$bus") prot_us+=("$pus")
    log "  round $round ($first first): $detail"
  done
  med=$(median "${ratios[@]}")
  met=$(awk -v r="$med" 'BEGIN { print (r <= 1.05) ? "yes" : "**no**" }')
  note=""
  ((noisy_kept > 0)) && note=", $noisy_kept noisy rounds kept"
  ROWS+=("| $what (\`h2load -t 1 $flags -n $REQUESTS\`) | $(median "${plain_us[@]}") | $(median "${prot_us[@]}") | $med (rounds: $(range "${ratios[@]}")$note) | <= 1.05 | $met | $(median "${tick_ratios[@]}") |")
done

echo "Server CPU time (schedstat) per request, \`axum_server\` protected (limits lifted) against"
echo "\`--unprotected\`: medians of $ROUNDS interleaved rounds; the ratio is the median of the"
echo "rounds' ratios. $(nproc) CPUs, pin: $PIN, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown);" \
  "took $(awk -v a="$STARTED" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }') s."
echo
echo "| workload | unprotected µs/request | protected µs/request | ratio protected / unprotected | target | met? | ratio from utime+stime ticks |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
