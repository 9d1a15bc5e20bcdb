#!/usr/bin/env bash
# Server instructions per HTTP request, protected against unprotected, counted by
# valgrind's callgrind: unlike time, an instruction count repeats from run to run on a
# shared machine. For each server it runs two fixed workloads under callgrind and takes
# the difference, so start-up and shut-down cancel out:
#
#   keep-alive  N2 - N1 GET / on one HTTP/1.1 connection
#   connection  N2 - N1 connections, each opened, one GET / with `Connection: close`,
#               and closed
#
# Usage: bash bench/callgrind.sh [--server PATH]
#   --server PATH  measure this axum_server binary instead of building the current one
#                  (to compare two versions)
# The client is Python's http.client, on 127.0.0.1; nothing else runs under callgrind.
set -euo pipefail

SERVER=
while (($#)); do
  case $1 in
    --server) SERVER=${2:?--server needs a path}; shift 2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is not installed" >&2; exit 1; }
if [[ -z $SERVER ]]; then
  # shellcheck source=bench/lib.sh
  source bench/lib.sh
  bench_build axum_server
  SERVER=$BENCH_BIN/axum_server
fi

N1=500
N2=1500
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
  timeout 600 python3 "$WORK/client.py" "$addr" "$count" "$workload"
  kill -TERM "$pid"
  wait "$pid" || true
  PIDS=()
  awk '/^(summary|totals):/ { print $2; exit }' "$out.cg"
}

# per_request WORKLOAD [server flags...]
per_request() {
  local workload=$1 low high
  shift
  low=$(instructions "$workload" "$N1" "$@")
  high=$(instructions "$workload" "$N2" "$@")
  echo $(((high - low) / (N2 - N1)))
}

printf '| workload | unprotected | protected | ratio |\n|---|---|---|---|\n'
for workload in keep-alive connection; do
  plain=$(per_request "$workload" --unprotected)
  protected=$(per_request "$workload" "${LIFTED[@]}")
  ratio=$(awk -v a="$protected" -v b="$plain" 'BEGIN { printf "%.3f", a / b }')
  printf '| %s | %s | %s | %s× |\n' "$workload" "$plain" "$protected" "$ratio"
done
