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
# Usage: bash bench/callgrind.sh [--server PATH]
#   --server PATH  measure this axum_server binary instead of building the current one
#                  (to compare two versions)
# The clients are Python's http.client and h2load (Debian `nghttp2-client`, installed if
# missing and the script runs as root), on 127.0.0.1; nothing else runs under callgrind.
set -euo pipefail
shopt -s inherit_errexit

SERVER=
while (($#)); do
  case $1 in
    --server) SERVER=${2:?--server needs a path}; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
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

# instructions WORKLOAD COUNT [server flags...]: the server's total, for one run.
instructions() {
  local workload=$1 count=$2 out
  shift 2
  out="$WORK/run.$RANDOM"
  valgrind --tool=callgrind --callgrind-out-file="$out.cg" "$SERVER" --addr 127.0.0.1:0 "$@" \
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
  awk '/^(summary|totals):/ { print $2; exit }' "$out.cg"
}

# per_request WORKLOAD [server flags...]
per_request() {
  local workload=$1 n1=$N1 n2=$N2 low high
  shift
  if [[ $workload == h2load-* ]]; then n1=$H1 n2=$H2; fi
  low=$(instructions "$workload" "$n1" "$@")
  high=$(instructions "$workload" "$n2" "$@")
  echo $(((high - low) / (n2 - n1)))
}

printf '| workload | unprotected | protected | ratio |\n|---|---|---|---|\n'
for workload in keep-alive connection h2load-http1 h2load-http2; do
  plain=$(per_request "$workload" --unprotected)
  protected=$(per_request "$workload" "${LIFTED[@]}")
  ratio=$(awk -v a="$protected" -v b="$plain" 'BEGIN { printf "%.3f", a / b }')
  printf '| %s | %s | %s | %s× |\n' "$workload" "$plain" "$protected" "$ratio"
done
