#!/usr/bin/env bash
# load.sh — the relay under load on loopback, in spool mode and in direct mode.
#
# Builds relay, relay-load and relay-sink into a temporary directory; for each mode starts a
# counting sink (the upstream) and the relay (RSA-2048 default key, every message rewritten
# to the fallback and signed, SPF and delegation off, max_connections 8), sends WARMUP
# untimed messages, then N timed ones of S bytes over C reused sessions, and waits until the
# sink has counted them all. Prints, per mode:
#   accept:     relay-load's figures (msg/s until the last 250, latency p50/p90/p99)
#   end to end: first send to last message at the sink (in spool mode the 250 comes after
#               the fsync, before delivery, so this is the figure that matters)
#   cpu:        the relay's utime+stime over the timed run (/proc/PID/stat) per message
#   rss:        the relay's peak resident set (VmHWM), read just before it is stopped
#
#   scripts/load.sh                       # N=5000 S=10240 C=20, both modes
#   N=2000 S=102400 MODES=spool scripts/load.sh
#
# Environment: N=5000 S=10240 C=20 WARMUP=200 MODES="spool direct" TIMEOUT=300 (seconds
# per wait); KEEP=1 keeps the temporary directory (configs, logs), as does any failure.
# Everything listens on 127.0.0.1 with kernel-chosen ports; everything started here is
# stopped here, by PID.
set -euo pipefail

N=${N:-5000} S=${S:-10240} C=${C:-20} WARMUP=${WARMUP:-200}
MODES=${MODES:-spool direct} TIMEOUT=${TIMEOUT:-300} KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "load.sh: $*" >&2; exit 1; }
for v in N S C WARMUP TIMEOUT; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"; done
((N >= 1 && N <= 1000000 && C >= 1 && C <= 1000 && S >= 100 && S <= 26000000)) || die "N, C or S out of range"
((TIMEOUT >= 1 && TIMEOUT <= 3600)) || die "TIMEOUT out of range (1..3600)"
for m in $MODES; do [[ $m == spool || $m == direct ]] || die "unknown mode '$m' (spool, direct)"; done

TMP=$(mktemp -d /tmp/relay-load.XXXXXX)
PIDS=()   # sink and relay of the current mode, stopped by PID on any exit
LOADPID=  # relay-load while it runs
cleanup() {
	local rc=$? p
	for p in $LOADPID "${PIDS[@]}"; do stop "$p"; done
	PIDS=()
	# A failed run keeps its logs (relay.log, sink.out/err, load.json) for a look.
	if [[ $KEEP == 1 || $rc != 0 ]]; then echo "load.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# stop PID: SIGTERM, up to 10 s for it to exit, then SIGKILL; reaped, so the PID is not
# signalled again after it could have been reused.
stop() {
	kill -TERM "$1" 2>/dev/null || return 0
	local i
	for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

# wait_for FILE REGEX PID: bounded wait until FILE has a line matching REGEX, while PID
# lives; prints the match.
wait_for() {
	local i
	for ((i = 0; i < TIMEOUT * 20; i++)); do
		grep -Eo -m1 "$2" "$1" 2>/dev/null && return 0
		kill -0 "$3" 2>/dev/null || die "process $3 exited: $(tail -n5 "$1")"
		sleep 0.05
	done
	die "timed out waiting for /$2/ in $1"
}

# sink_count FILE: the sink's latest "count=N bytes=B last_ns=T" line as "N T".
sink_count() { tail -n1 "$1" | sed -n 's/^count=\([0-9]*\) bytes=[0-9]* last_ns=\([0-9]*\)$/\1 \2/p'; }

# wait_sink FILE WANT: bounded wait until the sink has counted WANT messages; prints "N T".
wait_sink() {
	local i c last
	for ((i = 0; i < TIMEOUT * 20; i++)); do
		read -r c last < <(sink_count "$1"; echo "0 0") || true
		((c >= $2)) && { echo "$c $last"; return 0; }
		sleep 0.05
	done
	die "the sink counted ${c:-0} of $2 messages in $TIMEOUT s ($1)"
}

# cpu_ticks PID: utime + stime (fields 14 and 15 of /proc/PID/stat, after the "(comm)").
cpu_ticks() { local s; s=$(<"/proc/$1/stat"); s=${s##*) }; awk '{ print $12 + $13 }' <<<"$s"; }

echo "== relay load: N=$N S=${S}B C=$C warmup=$WARMUP modes=[$MODES] ($(nproc) cores, $(uname -r)," \
	"load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ))"
(cd "$ROOT" && go build -o "$TMP/relay" ./cmd/relay && go build -o "$TMP/relay-load" ./cmd/relay-load &&
	go build -o "$TMP/relay-sink" ./cmd/relay-sink)
HZ=$(getconf CLK_TCK)

for mode in $MODES; do
	d=$TMP/$mode
	mkdir -p "$d"
	# The sink prints its address, then its count every second while it changes.
	"$TMP/relay-sink" -addr 127.0.0.1:0 >"$d/sink.out" 2>"$d/sink.err" &
	sink=$!
	PIDS+=("$sink")
	sink_addr=$(wait_for "$d/sink.out" '127\.0\.0\.1:[0-9]+' "$sink")

	cat >"$d/relay.toml" <<-EOF
		hostname = "relay.load.test"
		[smtp]
		listen = "127.0.0.1:0"
		[sender]
		fallback = "noreply@fallback.example"
		[spf]
		enabled = false
		[dkim]
		private_key = "$ROOT/testdata/keys/default.pem"
		delegation_check = false
		[upstream]
		address = "$sink_addr"
		tls = "none"
		max_connections = 8
		[queue]
		mode = "$mode"
		dir = "$d/spool"
	EOF
	"$TMP/relay" serve -config "$d/relay.toml" >"$d/relay.log" 2>&1 &
	relay=$!
	PIDS+=("$relay")
	# The start line logs listen=[127.0.0.1:PORT]; the port is the kernel's choice.
	relay_addr=$(wait_for "$d/relay.log" 'listen="?\[127\.0\.0\.1:[0-9]+' "$relay" | grep -Eo '127\.0\.0\.1:[0-9]+')

	# In the background and waited for: a signal interrupts "wait" (not a foreground child),
	# so SIGTERM/SIGINT stop everything at once.
	load() {
		local rc=0
		"$TMP/relay-load" -addr "$relay_addr" -size "$S" -c "$C" -timeout 60s "$@" &
		LOADPID=$!
		wait "$LOADPID" || rc=$?
		LOADPID= # reaped: never signalled again
		return "$rc"
	}
	if ((WARMUP > 0)); then
		load -n "$WARMUP" >/dev/null || die "$mode: warm-up failed (see $d/relay.log)"
		wait_sink "$d/sink.out" "$WARMUP" >/dev/null
	fi

	cpu0=$(cpu_ticks "$relay")
	t0=$(date +%s%N)
	load -n "$N" -json >"$d/load.json" || die "$mode: relay-load reported failures: $(cat "$d/load.json")"
	read -r got last < <(wait_sink "$d/sink.out" $((WARMUP + N)))
	cpu1=$(cpu_ticks "$relay")
	hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$relay/status")
	stop "$relay"
	stop "$sink"
	PIDS=()

	# One line of figures; awk does the floating point.
	awk -v mode="$mode" -v n="$N" -v t0="$t0" -v last="$last" -v got="$got" -v want=$((WARMUP + N)) \
		-v cpu=$((cpu1 - cpu0)) -v hz="$HZ" -v hwm="$hwm" -v j="$(cat "$d/load.json")" 'BEGIN {
		split("", f)
		while (match(j, /"[a-z0-9_]+":[0-9.]+/)) {
			kv = substr(j, RSTART, RLENGTH); j = substr(j, RSTART + RLENGTH)
			split(kv, p, ":"); gsub(/"/, "", p[1]); f[p[1]] = p[2]
		}
		e2e = (last - t0) / 1e9
		printf "%-6s accept %7.1f msg/s (%.2f s, p50 %.2f p90 %.2f p99 %.2f ms) | end to end %7.1f msg/s (%.2f s)", \
			mode, f["msg_per_sec"], f["seconds"], f["p50_ms"], f["p90_ms"], f["p99_ms"], n / e2e, e2e
		printf " | cpu %.3f ms/msg | peak rss %.1f MiB", 1000 * cpu / hz / n, hwm / 1024
		if (got != want) printf " | sink got %d, want %d", got, want
		printf "\n"
	}'
done
