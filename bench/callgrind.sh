#!/usr/bin/env bash
# Server instructions per HTTP request, protected against unprotected, counted by
# valgrind's callgrind: unlike time, an instruction count repeats from run to run on a
# shared machine. For each server it runs two fixed workloads under callgrind and takes
# the difference, so start-up and shut-down cancel out:
#
#   keep-alive  N2 - N1 GET / on one HTTP/1.1 connection
#   connection  N2 - N1 connections, each opened, one GET / with `Connection: close`,
#               and closed
#   h2load HTTP/1.1, h2load HTTP/2
#               H2 - H1 requests under bench/h2load.sh's two loads: 32 HTTP/1.1
#               keep-alive connections, and 8 HTTP/2 connections of 16 streams each.
#               Under callgrind the server is slow enough that h2load's requests queue
#               up, so more of them share a read or a write than at full speed: these
#               count the same work as bench/h2load.sh, batched differently.
#
# With --cache, valgrind's cachegrind simulates the caches and branch predictors
# instead, for h2load's two loads and for HTTP/1.1 on one connection (h2load -c 1),
# and prints per request: instructions, instruction-cache misses, data-cache read and
# write misses (first level), and mispredicted indirect branches. Time tracks these
# misses as well as instructions: a miss costs ten cycles or more. Comparing one
# connection with 32 shows what each connection's state costs once the other
# connections' requests have pushed it out of the cache. The data misses move from run
# to run with where the heap put things (the simulated cache is 8-way: a ninth line
# used at each request that falls in the same set evicts one), by a third and more
# for the protected server on one connection; so each figure is the median of five
# runs, with the range of the data misses.
#
# The servers run one tokio worker (TOKIO_WORKER_THREADS=1). valgrind runs one thread
# at a time, and with two workers which thread allocates and frees what changes from
# run to run, and so where glibc puts things: under callgrind, the protected server
# moved hyper's read buffer to grow it on 154 and 124 one-request connections of 300
# (two builds; 6 000 instructions of copy each), where a native run of either server,
# and a callgrind run with one worker, grew it in place on all 300 (counted by a
# preload that wraps `realloc`).
#
# Usage: bash bench/callgrind.sh [--server PATH] [--cache]
#   --server PATH  measure this axum_server binary instead of building the current one
#                  (to compare two versions)
#   --cache        cache and branch misses under h2load's loads (see above)
# The clients are Python's http.client and h2load (Debian `nghttp2-client`, installed if
# missing and the script runs as root), on 127.0.0.1; nothing else runs under callgrind.
set -euo pipefail
shopt -s inherit_errexit

SERVER=
CACHE=0
while (($#)); do
  case $1 in
    --server) SERVER=${2:?--server needs a path}; shift 2 ;;
    --cache) CACHE=1; shift ;;
    -h | --help) sed -n '2,42p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is not installed" >&2; exit 1; }
if ! command -v h2load >/dev/null; then
  [[ $(id -u) -eq 0 ]] || { echo "error: h2load is not installed: apt-get install nghttp2-client (as root)" >&2; exit 1; }
  echo "installing nghttp2-client (h2load)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >&2
fi
if [[ -z $SERVER ]]; then
  # shellcheck source=bench/lib.sh
  source bench/lib.sh
  bench_build axum_server
  SERVER=$BENCH_BIN/axum_server
fi

if ((CACHE)); then
  TOOL=cachegrind
  VALGRIND=(valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes)
else
  TOOL=callgrind
  VALGRIND=(valgrind --tool=callgrind)
fi
N1=500
N2=1500
H1=1000
H2=4000
# The protected server's admission limits, lifted so that the workload's own connections
# (all from 127.0.0.1) are never refused.
LIFTED=(--rate 100000000 --burst 100000000 --global-rate 100000000
  --max-per-peer 1000000 --max-connections 1000000)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tower-bouncer-callgrind.XXXXXX")
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PIDS=()

cat >"$WORK/client.py" <<'EOF'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
count, workload = int(sys.argv[2]), sys.argv[3]
def get(conn, headers):
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
if workload == "keep-alive":
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for _ in range(count):
        get(conn, {})
    conn.close()
else:
    for _ in range(count):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        get(conn, {"Connection": "close"})
        conn.close()
EOF

# totals WORKLOAD COUNT [server flags...]: the server's totals of the tool's events
# (callgrind's: instructions), for one run.
totals() {
  local workload=$1 count=$2 out
  shift 2
  out="$WORK/run.$RANDOM"
  "${VALGRIND[@]}" --"${TOOL}"-out-file="$out.cg" "$SERVER" --addr 127.0.0.1:0 "$@" \
    >"$out.stdout" 2>"$out.stderr" &
  local pid=$!
  PIDS=("$pid")
  for _ in $(seq 300); do
    grep -q '^listening on ' "$out.stdout" 2>/dev/null && break
    sleep 0.1
  done
  local addr
  addr=$(sed -n 's/^listening on //p' "$out.stdout" | head -n 1)
  [[ -n $addr ]] || { echo "error: the server did not start: $(cat "$out.stderr")" >&2; exit 1; }
  case $workload in
    h2load-http1) timeout 600 h2load -t 1 --h1 -c 32 -n "$count" "http://$addr/" >"$out.h2load" ;;
    h2load-http1-one) timeout 600 h2load -t 1 --h1 -c 1 -n "$count" "http://$addr/" >"$out.h2load" ;;
    h2load-http2) timeout 600 h2load -t 1 -c 8 -m 16 -n "$count" "http://$addr/" >"$out.h2load" ;;
    *) timeout 600 python3 "$WORK/client.py" "$addr" "$count" "$workload" ;;
  esac
  if [[ $workload == h2load-* ]] && ! grep -q "^requests: .* $count succeeded, 0 failed, 0 errored, 0 timeout" "$out.h2load"; then
    echo "error: h2load's requests did not all succeed: $(grep '^requests:' "$out.h2load")" >&2
    exit 1
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  PIDS=()
  awk '/^(summary|totals):/ { $1 = ""; print; exit }' "$out.cg"
}

# per_request WORKLOAD [server flags...]
per_request() {
  local workload=$1 n1=$N1 n2=$N2 low high
  shift
  if [[ $workload == h2load-* ]]; then n1=$H1 n2=$H2; fi
  low=$(totals "$workload" "$n1" "$@")
  high=$(totals "$workload" "$n2" "$@")
  # Each event's difference per request, in the tool's order.
  awk -v low="$low" -v high="$high" -v n=$((n2 - n1)) 'BEGIN {
    split(low, l); count = split(high, h)
    for (i = 1; i <= count; i++) printf "%s%.1f", (i > 1 ? " " : ""), (h[i] - l[i]) / n
    print ""
  }'
}

# median_runs WORKLOAD [server flags...]: each event's median per request over five
# runs, then the lowest and highest of each event, in the tool's order.
median_runs() {
  local runs=()
  for _ in 1 2 3 4 5; do
    runs+=("$(per_request "$@")")
  done
  printf '%s\n' "${runs[@]}" | python3 -c '
import sys
runs = [[float(x) for x in line.split()] for line in sys.stdin if line.strip()]
columns = [sorted(column) for column in zip(*runs)]
print(" ".join(str(c[len(c) // 2]) for c in columns),
      " ".join(str(c[0]) for c in columns),
      " ".join(str(c[-1]) for c in columns))'
}

export TOKIO_WORKER_THREADS=1
if ((CACHE)); then
  # cachegrind's events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw Bc Bcm Bi Bim
  events=13
  printf '| workload | event | unprotected | protected | protected - unprotected | ratio |\n'
  printf '|---|---|---|---|---|---|\n'
  for workload in h2load-http1-one h2load-http1 h2load-http2; do
    read -ra plain <<<"$(median_runs "$workload" --unprotected)"
    read -ra protected <<<"$(median_runs "$workload" "${LIFTED[@]}")"
    for event in "0 instructions" "1 instruction-cache misses" "4 data-cache read misses" \
      "7 data-cache write misses" "12 mispredicted indirect branches"; do
      read -r i name <<<"$event"
      awk -v w="$workload" -v name="$name" -v a="${protected[$i]}" -v b="${plain[$i]}" \
        -v al="${protected[$((i + events))]}" -v ah="${protected[$((i + 2 * events))]}" \
        -v bl="${plain[$((i + events))]}" -v bh="${plain[$((i + 2 * events))]}" -v i="$i" '
        BEGIN {
          range_b = (i == 4 || i == 7) ? sprintf(" (%.1f–%.1f)", bl, bh) : ""
          range_a = (i == 4 || i == 7) ? sprintf(" (%.1f–%.1f)", al, ah) : ""
          printf "| %s | %s | %.1f%s | %.1f%s | %+.1f | %.3f× |\n", w, name, b, range_b, a, range_a, a - b, a / b
        }'
    done
  done
  exit 0
fi

printf '| workload | unprotected | protected | ratio |\n|---|---|---|---|\n'
for workload in keep-alive connection h2load-http1 h2load-http2; do
  plain=$(per_request "$workload" --unprotected)
  protected=$(per_request "$workload" "${LIFTED[@]}")
  ratio=$(awk -v a="$protected" -v b="$plain" 'BEGIN { printf "%.3f", a / b }')
  printf '| %s | %.0f | %.0f | %s× |\n' "$workload" "$plain" "$protected" "$ratio"
done
