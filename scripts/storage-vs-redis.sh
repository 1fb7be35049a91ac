#!/usr/bin/env bash
# Durable enqueue throughput of Rossby's storage next to Redis on the same machine.
#
#   scripts/storage-vs-redis.sh
#
# 1. Installs Debian's redis-server (and redis-benchmark) if they are missing.
# 2. Starts its own redis-server on a free loopback port with its data in a
#    temporary directory (killed and removed on exit; no other Redis is touched),
#    AOF on, RDB snapshots off, and runs redis-benchmark: XADD of one 1 KiB entry
#    to a random per-box stream (box:<0..boxes-1>), 64 clients, a fixed number of
#    requests; first with appendfsync always, then (fresh server and directory)
#    with appendfsync everysec.
# 3. Runs `cargo bench -p rossby-storage --bench storage-bench` (ROSSBY_BENCH_*
#    variables of the environment pass through).
# 4. Prints both sets of figures and, on its last line, the ratios of Rossby's
#    durable enqueue rate to Redis's XADD rates.
#
# Knobs (environment):
#   ROSSBY_REDIS_REQUESTS  XADDs per redis-benchmark run (default 100000)
#   ROSSBY_REDIS_CLIENTS   redis-benchmark clients (default: ROSSBY_BENCH_TASKS or 64)
#   ROSSBY_REDIS_KEYS      streams, the -r range (default: ROSSBY_BENCH_BOXES or 10000)
#   ROSSBY_BENCH_*         passed to storage-bench (see docs/performance.md)
set -euo pipefail

cd "$(dirname "$0")/.."

requests="${ROSSBY_REDIS_REQUESTS:-100000}"
clients="${ROSSBY_REDIS_CLIENTS:-${ROSSBY_BENCH_TASKS:-64}}"
keys="${ROSSBY_REDIS_KEYS:-${ROSSBY_BENCH_BOXES:-10000}}"
value_bytes=1024

log() { printf 'storage-vs-redis: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

for knob in requests clients keys; do
	[[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer (got '${!knob}')"
done

# --- 1. Redis binaries -------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
	sudo=()
	if [[ "$(id -u)" -ne 0 ]]; then
		command -v sudo >/dev/null || die "redis-server is missing and installing it needs root"
		sudo=(sudo)
	fi
	log "installing Debian's redis-server and redis-tools"
	# Keep the package's own service from starting while it is installed.
	policy=/usr/sbin/policy-rc.d
	own_policy=0
	if [[ ! -e "$policy" ]]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
		"${sudo[@]}" chmod 755 "$policy"
		own_policy=1
	fi
	status=0
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || status=$?
	if [[ "$status" -eq 0 ]]; then
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends redis-server redis-tools || status=$?
	fi
	if [[ "$own_policy" -eq 1 ]]; then
		"${sudo[@]}" rm -f "$policy"
	fi
	[[ "$status" -eq 0 ]] || die "apt-get failed (status $status)"
fi

# --- 2. Our own redis-server, killed on exit ---------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/storage-vs-redis.XXXXXX")"
redis_pid=""

stop_redis() {
	if [[ -n "$redis_pid" ]] && kill -0 "$redis_pid" 2>/dev/null; then
		kill "$redis_pid" 2>/dev/null || true
		for _ in $(seq 50); do
			kill -0 "$redis_pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$redis_pid" 2>/dev/null || true
		wait "$redis_pid" 2>/dev/null || true
	fi
	redis_pid=""
}

cleanup() {
	stop_redis
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A loopback port nobody listens on (redis-server's bind failing is caught below).
free_port() {
	local port
	for _ in $(seq 100); do
		port=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	return 1
}

port=""
# start_redis <appendfsync>: a fresh server with an empty data directory.
start_redis() {
	local fsync="$1" dir attempt
	for attempt in 1 2 3 4 5; do
		port="$(free_port)" || die "no free loopback port"
		dir="$work/redis-$fsync-$attempt"
		mkdir -p "$dir"
		redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
			--daemonize no --protected-mode yes --save "" \
			--appendonly yes --appendfsync "$fsync" \
			--logfile "$dir/redis.log" &
		redis_pid=$!
		for _ in $(seq 100); do
			if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
				return 0
			fi
			kill -0 "$redis_pid" 2>/dev/null || break
			sleep 0.1
		done
		log "redis-server did not come up on port $port (attempt $attempt):"
		tail -n 5 "$dir/redis.log" >&2 || true
		stop_redis
	done
	die "could not start redis-server"
}

# A fixed 1 KiB value of letters and digits (no quotes or commas, so the CSV
# output stays trivial to parse).
value="$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$value_bytes" || true)"
[[ "${#value}" -eq "$value_bytes" ]] || die "could not build the $value_bytes-byte value"

# run_redis <appendfsync>: sets `rps` to the XADD rate (requests per second). Runs
# in this shell (not in a command substitution), so the exit trap always knows the
# server to stop.
rps=""
run_redis() {
	local fsync="$1" csv
	rps=""
	start_redis "$fsync"
	log "redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') on 127.0.0.1:$port," \
		"appendonly yes, appendfsync $fsync: $requests XADDs, $clients clients, $keys streams"
	csv="$(redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -n "$requests" -r "$keys" \
		--csv XADD 'box:__rand_int__' '*' m "$value")" || die "redis-benchmark failed"
	# A header (`"test","rps","avg_latency_ms",...`) then one row: look columns up by name.
	column() {
		printf '%s\n' "$csv" | tr -d '\r' | awk -F',' -v name="$1" '
			{ gsub(/"/, "") }
			$1 == "test" { for (i = 1; i <= NF; i++) if ($i == name) col = i; next }
			col && NF >= col { value = $col }
			END { print value }'
	}
	rps="$(column rps)"
	[[ "$rps" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "cannot read the rate from redis-benchmark's output: $(printf '%s' "$csv" | cut -c 1-200)"
	rps="$(printf '%.0f' "$rps")"
	local entries
	entries="$(redis-cli -h 127.0.0.1 -p "$port" dbsize)"
	log "  $rps XADD/s, latency p50 $(column p50_latency_ms) ms, p99 $(column p99_latency_ms) ms" \
		"($entries streams; $(du -sh "$work/redis-$fsync-"* | tail -n 1 | cut -f 1) on disk)"
	stop_redis
}

# Build the benchmark first, so a compile error shows before the Redis runs.
log "building storage-bench"
cargo bench -p rossby-storage --bench storage-bench --no-run

run_redis always
redis_always="$rps"
run_redis everysec
redis_everysec="$rps"

# --- 3. Rossby's storage benchmark -------------------------------------------
log "running storage-bench"
bench_log="$work/storage-bench.log"
cargo bench -p rossby-storage --bench storage-bench 2>&1 | tee "$bench_log"
line="$(grep '^storage-bench enqueue_durable_per_s=' "$bench_log" | tail -n 1 || true)"
[[ -n "$line" ]] || die "no result line from storage-bench"
field() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
durable="$(field enqueue_durable_per_s "$line")"
nosync="$(field enqueue_nosync_per_s "$line")"
[[ -n "$durable" && -n "$nosync" ]] || die "cannot parse: $line"
instructions="$(grep '^storage-bench instructions_per_enqueue=' "$bench_log" | tail -n 1 || true)"

# --- 4. Summary ----------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "0" }'; }
echo
echo "summary ($clients concurrent writers, 1 KiB entries, $keys boxes/streams, one machine):"
printf '  Rossby storage, fjall group commit: %s durable enqueues/s (no sync: %s/s)\n' "$durable" "$nosync"
if [[ -n "$instructions" ]]; then
	printf '  Rossby storage, %s\n' "${instructions#storage-bench }"
fi
printf '  Redis XADD, appendfsync always:     %s/s\n' "$redis_always"
printf '  Redis XADD, appendfsync everysec:   %s/s\n' "$redis_everysec"
printf 'storage-vs-redis storage_durable_per_s=%s redis_always_per_s=%s redis_everysec_per_s=%s ratio_vs_always=%s ratio_vs_everysec=%s\n' \
	"$durable" "$redis_always" "$redis_everysec" \
	"$(ratio "$durable" "$redis_always")" "$(ratio "$durable" "$redis_everysec")"
