# shellcheck shell=bash
# What the benchmark scripts share, sourced by them: logging, the servers
# they start (each a direct child, killed when the script exits), the CPU time of a
# process, of this shell's children and of the machine, and the rounds' statistics.
# The caller sets WORK (its scratch directory), CLK_TCK and FOREIGN_MAX, and installs
# `cleanup` as its EXIT trap.

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PIDS=()

forget_pid() {
  local pid=$1 kept=() p
  for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

cleanup() {
  local status=$? pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  exit "$status"
}

# Sets CHILDREN_TICKS to the CPU time of this shell's reaped children, in clock ticks,
# from the `times` builtin. Not in a $(...): a subshell would report its own children.
children_ticks() {
  times >"$WORK/times"
  # shellcheck disable=SC2034 # read by the caller
  CHILDREN_TICKS=$(awk -v hz="$CLK_TCK" 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz }' "$WORK/times")
}

# utime+stime of a process, in clock ticks. Fields are counted after the command
# name's closing parenthesis, since a name may hold spaces.
proc_ticks() {
  local rest
  rest=$(<"/proc/$1/stat")
  rest=${rest##*") "}
  awk '{ print $12 + $13 }' <<<"$rest"
}

# Busy CPU of the whole machine, in ticks: user, nice, system, irq, softirq. The kernel
# here accounts ticks (CONFIG_IRQ_TIME_ACCOUNTING is off), so a tick spent in softirq is
# also in the interrupted task's stime, and busy minus our own tasks' time is everybody
# else's. On a kernel with IRQ time accounting, the loopback traffic's own softirq time
# would count as foreign, and FOREIGN_MAX would need raising.
machine_busy() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END {
  printf "%s to %s", lo, hi }'; }
# noisy CORES: whether a run's foreign load is over FOREIGN_MAX.
noisy() { awk -v f="$1" -v m="$FOREIGN_MAX" 'BEGIN { exit !(f > m) }'; }

# Builds release examples as a user builds a server: without tokio's `test-util`.
# Cargo builds examples with the dev-dependencies' features, and the tests need
# `test-util` (directly, and through tokio-test and tower-test) to pause time. It swaps
# tokio's clock for one that takes a lock on every read: on every worker's park while a
# timer is armed and on every timer's start, a cost no deployed server has, and one
# that falls more on the protected server, which arms timers. So the package is copied
# with a manifest that leaves those three out, and built there; the copy keeps the
# files' modification times, so what did not change is not rebuilt.
# Usage: bench_build EXAMPLE...; sets BENCH_BIN to the directory of the built examples.
bench_build() {
  local root=${CARGO_TARGET_DIR:-target}/bench-build example args=()
  local copy=$root/package
  mkdir -p "$copy"
  rm -rf "$copy/src" "$copy/examples" "$copy/benches"
  cp -a src examples benches Cargo.lock "$copy/"
  sed -e 's/^\(tokio = .*\), "test-util"\]/\1]/' -e '/^tokio-test = /d' -e '/^tower-test = /d' \
    Cargo.toml >"$copy/Cargo.toml.new"
  if cmp -s "$copy/Cargo.toml.new" "$copy/Cargo.toml"; then
    rm "$copy/Cargo.toml.new"
  else
    mv "$copy/Cargo.toml.new" "$copy/Cargo.toml"
  fi
  for example in "$@"; do args+=(--example "$example"); done
  log "building (cargo build --release ${args[*]}, without tokio's test-util, in $copy)"
  CARGO_TARGET_DIR=$root/target cargo build --quiet --release --manifest-path "$copy/Cargo.toml" "${args[@]}" >&2
  if CARGO_TARGET_DIR=$root/target cargo tree --quiet --manifest-path "$copy/Cargo.toml" \
    -e features,normal,dev -i tokio | grep -q 'tokio feature "test-util"'; then
    die "the benchmarks' build still has tokio's test-util: update bench_build's manifest edits"
  fi
  # shellcheck disable=SC2034 # read by the caller
  BENCH_BIN=$root/target/release/examples
}
