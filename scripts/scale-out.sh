#!/usr/bin/env bash
# scale-out.sh — two relay instances behind HAProxy on loopback (README "Running several
# instances"): the instances share nothing but one TOML template (only the listen ports and
# [queue] dir differ), HAProxy sends PROXY v2 from its own source address and checks /readyz.
#
#  1. builds relay, relay-load and relay-sink; uses Debian's haproxy (installed with apt-get
#     when missing; exit 0 with "SKIP: haproxy cannot be installed here" if that fails);
#  2. kill test: relay-load sends N_KILL messages through HAProxy from 127.0.0.2, retrying
#     what fails; relay a is killed with SIGKILL after ~half were accepted and restarted on its
#     spool. Every message that got a 250 must reach the sink (the sink keeps each message;
#     they are matched by the "Subject: relay-load NNNNNNNN" relay-load writes). Duplicates are
#     reported and allowed only for messages whose 250 may have been lost in the kill (a
#     connection cut after the final dot) or that relay a had accepted before the kill (it may
#     die between the upstream's 250 and its done record: at least once, never lost);
#  3. the relays' logs name the real client (127.0.0.2), never HAProxy's source (127.0.0.3);
#  4. rolling config change: rate_per_network = "10/m" is written into the TOML and each
#     instance gets SIGHUP in turn; then a client at 127.0.2.4 (another /24) goes over the
#     limit (451 4.7.1) while 127.0.0.2, behind the same HAProxy address, is not limited;
#     then the limit is taken out again the same way;
#  5. throughput, the same relay-load run (N, C, S) against one instance directly, one
#     instance behind HAProxy (the other disabled on HAProxy's CLI) and both behind HAProxy.
#
#   scripts/scale-out.sh
#   N=5000 C=40 scripts/scale-out.sh
#
# Environment: N=2000 C=20 S=10240 (throughput runs), N_KILL=1000, TIMEOUT=60 (seconds per
# wait), KEEP=1 keeps the temporary directory (configs, logs, outcomes), as does any failure.
# Everything listens on loopback, on kernel-chosen ports (relay-sink) or ports checked free;
# every process started here is stopped here, by PID.
set -euo pipefail

N=${N:-2000} C=${C:-20} S=${S:-10240} N_KILL=${N_KILL:-1000} TIMEOUT=${TIMEOUT:-60} KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CLIENT=127.0.0.2  # the load's real client address
PROXYSRC=127.0.0.3 # HAProxy's source address towards the relays
OTHER=127.0.2.4   # the client that goes over the rate limit: another /24 than CLIENT
RATE=10/m         # rate_per_network during the rate-limit check (per instance: bursts of 10)

die() { echo "scale-out.sh: FAIL: $*" >&2; exit 1; }
for v in N C S N_KILL TIMEOUT; do [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number"; done
((N >= 1 && C >= 1 && C <= 200 && S >= 500 && N_KILL >= 100 && TIMEOUT >= 1)) || die "N, C, S, N_KILL or TIMEOUT out of range"

T0=$SECONDS
TMP=$(mktemp -d /tmp/relay-scale-out.XXXXXX)
declare -A PID=() # name -> PID of what runs now: sink, a, b, haproxy, load
cleanup() {
	local rc=$? n
	for n in load haproxy a b sink; do [[ -n ${PID[$n]:-} ]] && stop "${PID[$n]}"; done
	if [[ $KEEP == 1 || $rc != 0 ]]; then echo "scale-out.sh: kept $TMP" >&2; else rm -rf "$TMP"; fi
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

# free_port: a loopback port nothing listens on (bash connects; refused means free). The
# ports go into configuration files, which need them before anything binds; the range is
# below the kernel's ephemeral range, so no outgoing connection takes one meanwhile.
declare -A TAKEN=()
free_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ -n ${TAKEN[$p]:-} ]] && continue
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
			! ss -Htan "( sport = :$p )" 2>/dev/null | grep -q .; then
			TAKEN[$p]=1
			echo "$p"
			return 0
		fi
	done
	die "no free port found"
}

# http_status PORT PATH: the status code of GET PATH on 127.0.0.1:PORT ("000": no answer).
http_status() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1$2" || true; }

# hacli CMD: one command on HAProxy's CLI (a TCP stats socket), its answer on stdout.
hacli() {
	local out
	exec 3<>"/dev/tcp/127.0.0.1/$HA_CLI" || die "haproxy CLI unreachable"
	printf '%s\n' "$1" >&3
	out=$(cat <&3)
	exec 3<&-
	printf '%s\n' "$out"
}

# server_states: "a=STATE b=STATE" from "show servers state" (srv_op_state 2 is UP).
server_states() {
	hacli "show servers state relays" | awk '$2 == "relays" { printf "%s=%s ", $4, ($6 == 2 ? "UP" : "DOWN") }'
}

# wait_states WANT: bounded wait until server_states is WANT (e.g. "a=UP b=UP ").
wait_states() {
	local i s
	for ((i = 0; i < TIMEOUT * 10; i++)); do
		s=$(server_states)
		[[ $s == "$1" ]] && return 0
		sleep 0.1
	done
	die "haproxy servers are '$s', want '$1'"
}

# sink_count: the sink's messages so far (its directory, one file per message).
sink_count() { find "$TMP/sink" -name '*.eml' | wc -l; }

# wait_sink WANT: bounded wait until the sink holds WANT messages.
wait_sink() {
	local i c
	for ((i = 0; i < TIMEOUT * 20; i++)); do
		c=$(sink_count)
		((c >= $1)) && return 0
		sleep 0.05
	done
	die "the sink holds $c of $1 messages after $TIMEOUT s"
}

# queue_empty NAME: bounded wait until `relay queue list` of instance NAME says it is empty.
queue_empty() {
	local i
	for ((i = 0; i < TIMEOUT * 10; i++)); do
		"$TMP/relay" queue -config "$TMP/$1/relay.toml" list 2>&1 | grep -q '^queue is empty$' && return 0
		sleep 0.1
	done
	die "the spool of $1 is not empty after $TIMEOUT s: $("$TMP/relay" queue -config "$TMP/$1/relay.toml" list 2>&1 | head -5)"
}

# The TOML template: one file for both instances except the listen ports and the spool.
# render NAME SMTP_PORT HTTP_PORT RATE
render() {
	mkdir -p "$TMP/$1"
	cat >"$TMP/$1/relay.toml.new" <<-EOF
		hostname = "relay.scale-out.test"
		[smtp]
		listen = "127.0.0.1:$2"
		allow_networks = ["127.0.0.0/8"]
		proxy_protocol_from = ["$PROXYSRC/32"]
		rate_per_network = "$4"
		[sender]
		fallback = "noreply@fallback.example"
		[spf]
		enabled = false
		[dkim]
		private_key = "$ROOT/testdata/keys/default.pem"
		delegation_check = false
		[upstream]
		address = "$SINK_ADDR"
		tls = "none"
		max_connections = 8
		[queue]
		dir = "$TMP/$1/spool"
		retry_min = "1s"
		[http]
		listen = "127.0.0.1:$3"
	EOF
	mv "$TMP/$1/relay.toml.new" "$TMP/$1/relay.toml" # a reload never reads half a file
}

# start NAME: relay NAME on its config, log appended (a restart keeps the earlier lines);
# waits until its /readyz answers 200.
start() {
	local port=${HPORT[$1]} i
	"$TMP/relay" serve -config "$TMP/$1/relay.toml" >>"$TMP/$1/relay.log" 2>&1 &
	PID[$1]=$!
	for ((i = 0; i < TIMEOUT * 20; i++)); do
		[[ $(http_status "$port" /readyz) == 200 ]] && return 0
		kill -0 "${PID[$1]}" 2>/dev/null || die "relay $1 exited: $(tail -n5 "$TMP/$1/relay.log")"
		sleep 0.05
	done
	die "relay $1 not ready after $TIMEOUT s: $(curl -s "http://127.0.0.1:$port/readyz")"
}

# reload_all RATE: the rolling config change, one instance at a time: the TOML gets the
# new rate, SIGHUP, the instance's log confirms the reload, then the next one.
reload_all() {
	local n before i
	for n in a b; do
		before=$(grep -c 'reload' "$TMP/$n/relay.log" || true)
		render "$n" "${SPORT[$n]}" "${HPORT[$n]}" "$1"
		kill -HUP "${PID[$n]}"
		for ((i = 0; i < TIMEOUT * 20; i++)); do
			(($(grep -c 'reload' "$TMP/$n/relay.log" || true) > before)) && break
			sleep 0.05
		done
		grep 'reload' "$TMP/$n/relay.log" | tail -n1 | grep -qiE 'refus|invalid|fail' &&
			die "relay $n refused the reload: $(grep reload "$TMP/$n/relay.log" | tail -n1)"
		((i < TIMEOUT * 20)) || die "relay $n did not log a reload"
	done
}

# load OUT.json [relay-load flags]: relay-load in the background, waited for (a signal
# interrupts "wait", so SIGTERM/SIGINT stop everything at once); its exit status is returned.
load() {
	local out=$1 rc=0
	shift
	"$TMP/relay-load" -timeout 20s "$@" >"$out" 2>"$out.err" &
	PID[load]=$!
	wait "${PID[load]}" || rc=$?
	PID[load]= # reaped: never signalled again
	return "$rc"
}

# json FILE KEY: a number from relay-load's JSON line.
json() { grep -Eo "\"$2\":[0-9.]+" "$1" | head -n1 | cut -d: -f2; }

echo "== scale-out: 2 relays behind HAProxy on loopback ($(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ))"

# --- 1. build, haproxy ---------------------------------------------------------------------
if ! command -v haproxy >/dev/null 2>&1; then
	echo "haproxy missing: apt-get install -y haproxy"
	if ! { [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1 &&
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >"$TMP/apt.log" 2>&1 ||
			{ apt-get update >>"$TMP/apt.log" 2>&1 &&
				DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >>"$TMP/apt.log" 2>&1; }; }; } ||
		! command -v haproxy >/dev/null 2>&1; then
		echo "SKIP: haproxy cannot be installed here ($(tail -n1 "$TMP/apt.log" 2>/dev/null || echo "not root or no apt-get"))"
		exit 0
	fi
fi
echo "build: relay, relay-load, relay-sink; $(haproxy -v | head -n1)"
(cd "$ROOT" && go build -o "$TMP/relay" ./cmd/relay && go build -o "$TMP/relay-load" ./cmd/relay-load &&
	go build -o "$TMP/relay-sink" ./cmd/relay-sink)

# --- 2. sink, two relays, haproxy ----------------------------------------------------------
mkdir -p "$TMP/sink"
"$TMP/relay-sink" -addr 127.0.0.1:0 -dir "$TMP/sink" -quiet >"$TMP/sink.out" 2>"$TMP/sink.err" &
PID[sink]=$!
SINK_ADDR=$(wait_for "$TMP/sink.out" '127\.0\.0\.1:[0-9]+' "${PID[sink]}")

declare -A SPORT=() HPORT=()
for n in a b; do
	SPORT[$n]=$(free_port)
	HPORT[$n]=$(free_port)
	render "$n" "${SPORT[$n]}" "${HPORT[$n]}" ""
done
FRONT=$(free_port) HA_CLI=$(free_port)
cmp -s <(sed -E 's/127\.0\.0\.1:[0-9]+|\/a\/spool/X/' "$TMP/a/relay.toml") \
	<(sed -E 's/127\.0\.0\.1:[0-9]+|\/b\/spool/X/' "$TMP/b/relay.toml") ||
	die "the two configs differ beyond ports and spool"
start a
start b

cat >"$TMP/haproxy.cfg" <<-EOF
	global
	    maxconn 2000
	    stats socket ipv4@127.0.0.1:$HA_CLI level admin
	    stats timeout 5s
	defaults
	    mode tcp
	    timeout connect 2s
	    timeout client 60s
	    timeout server 60s
	    timeout check 2s
	    retries 3
	    option redispatch
	frontend smtp
	    bind 127.0.0.1:$FRONT
	    default_backend relays
	backend relays
	    balance roundrobin
	    source $PROXYSRC
	    option httpchk GET /readyz
	    http-check expect status 200
	    default-server send-proxy-v2 check inter 300ms fastinter 200ms downinter 300ms fall 2 rise 2
	    server a 127.0.0.1:${SPORT[a]} check port ${HPORT[a]}
	    server b 127.0.0.1:${SPORT[b]} check port ${HPORT[b]}
EOF
haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy rejects $TMP/haproxy.cfg"
haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
PID[haproxy]=$!
for ((i = 0; i < TIMEOUT * 20; i++)); do
	(exec 3<>"/dev/tcp/127.0.0.1/$HA_CLI") 2>/dev/null && break
	kill -0 "${PID[haproxy]}" 2>/dev/null || die "haproxy exited: $(tail -n5 "$TMP/haproxy.log")"
	sleep 0.05
done
wait_states "a=UP b=UP "
echo "up: sink $SINK_ADDR; relay a smtp :${SPORT[a]} http :${HPORT[a]}; relay b smtp :${SPORT[b]} http :${HPORT[b]};" \
	"haproxy 127.0.0.1:$FRONT (source $PROXYSRC, PROXY v2, /readyz checks): both UP"

# --- 3. kill test --------------------------------------------------------------------------
OUT=$TMP/kill.outcomes
rm -f "$OUT"
"$TMP/relay-load" -addr "127.0.0.1:$FRONT" -source "$CLIENT" -n "$N_KILL" -c 8 -size 4096 -timeout 10s \
	-retries 50 -retry-wait 200ms -outcomes "$OUT" -json >"$TMP/kill.json" 2>"$TMP/kill.err" &
PID[load]=$!
half=$((N_KILL / 2))
oks() { { grep -c ' ok ' "$OUT" 2>/dev/null || true; } | awk '{ n = $1 } END { print n + 0 }'; }
for ((i = 0; i < TIMEOUT * 100; i++)); do
	(($(oks) >= half)) && break
	kill -0 "${PID[load]}" 2>/dev/null || die "relay-load ended before $half messages were accepted: $(cat "$TMP/kill.json" "$TMP/kill.err")"
	sleep 0.01
done
kill -KILL "${PID[a]}"
acc_at_kill=$(oks)
{ wait "${PID[a]}"; } 2>/dev/null || true # (no "Killed" job notice)
PID[a]=
cp "$TMP/a/relay.log" "$TMP/a/relay.log.before-kill" # what a accepted before it died
echo "kill: relay a killed with SIGKILL after $acc_at_kill accepted; spool left: $(find "$TMP/a/spool" -type f | wc -l) files"
wait_states "a=DOWN b=UP "
echo "      haproxy marked a DOWN; restarting a on the same spool"
start a
wait_states "a=UP b=UP "
rc=0
wait "${PID[load]}" || rc=$?
PID[load]=
((rc == 0)) || die "relay-load could not get every message accepted (exit $rc): $(cat "$TMP/kill.json")"
queue_empty a
queue_empty b

# The accounting. accepted: indices with an "ok" attempt; uncertain: indices with an attempt
# cut off after the final dot; delivered: Subject indices at the sink, with their counts.
awk '$3 == "ok" { print $1 }' "$OUT" | sort >"$TMP/accepted"
awk '$3 == "unknown" { print $1 }' "$OUT" | sort -u >"$TMP/uncertain"
# relay-sink creates a message's file before it reads the DATA and keeps what it got when
# the connection breaks (here: relay a killed while delivering), so a file counts only when
# it is complete. Every complete copy of this run has the same size (same body, headers of
# fixed width), so a partial one is a file of another size; a copy cut after its last line
# but before the dot is repeated by the relay, and so counted among the duplicates of a.
find "$TMP/sink" -name '*.eml' -exec wc -c {} + | awk '$2 != "total"' >"$TMP/sizes"
full=$(awk '{ n[$1]++ } END { for (s in n) if (n[s] > m) { m = n[s]; best = s } print best }' "$TMP/sizes")
partial=$(awk -v full="$full" '$1 != full' "$TMP/sizes" | wc -l)
awk -v full="$full" '$1 == full { print $2 }' "$TMP/sizes" | xargs grep -h -m1 '^Subject: relay-load ' |
	tr -d '\r' | awk '{ print $3 }' | sort | uniq -c | awk '{ print $2, $1 }' >"$TMP/delivered"
# The queue ids relay a accepted before the kill, and so the indices it held.
grep 'message accepted' "$TMP/a/relay.log.before-kill" | grep -Eo ' id=[^ ]+' | cut -d= -f2 | sort -u >"$TMP/a-ids"
awk 'NR == FNR { a[$1] = 1; next } $3 == "ok" && ($4 in a) { print $1 }' "$TMP/a-ids" "$OUT" | sort >"$TMP/a-held"

n_acc=$(wc -l <"$TMP/accepted")
n_dup_acc=$(uniq -d "$TMP/accepted" | wc -l)
lost=$(join -v1 "$TMP/accepted" <(cut -d' ' -f1 "$TMP/delivered") | wc -l)
extra=$(join -v2 "$TMP/accepted" <(cut -d' ' -f1 "$TMP/delivered") | wc -l)
extra_bad=$(join -v2 "$TMP/accepted" <(cut -d' ' -f1 "$TMP/delivered") | join -v1 - "$TMP/uncertain" | wc -l)
awk '$2 > 1 { print $1 }' "$TMP/delivered" >"$TMP/dups"
n_dups=$(wc -l <"$TMP/dups")
dup_unc=$(join "$TMP/dups" "$TMP/uncertain" | wc -l)
dup_a=$(join -v1 "$TMP/dups" "$TMP/uncertain" | join - "$TMP/a-held" | wc -l)
dup_bad=$(join -v1 "$TMP/dups" "$TMP/uncertain" | join -v1 - "$TMP/a-held" | wc -l)
echo "kill: $(cat "$TMP/kill.json")"
echo "      accepted $n_acc of $N_KILL, delivered $(wc -l <"$TMP/delivered") distinct ($(sink_count) copies):" \
	"lost $lost, duplicates $n_dups ($dup_unc after a lost 250, $dup_a held by a at the kill, $dup_bad other)," \
	"delivered without a 250 $extra ($((extra - extra_bad)) after a lost 250, $extra_bad other);" \
	"$partial partial files at the sink (deliveries cut by the kill, not counted)"
((n_acc == N_KILL && n_dup_acc == 0)) || die "relay-load accounting: $n_acc accepted ($n_dup_acc twice) of $N_KILL"
((lost == 0)) || die "$lost accepted messages never reached the sink: $(join -v1 "$TMP/accepted" <(cut -d' ' -f1 "$TMP/delivered") | head -5 | tr '\n' ' ')"
((dup_bad == 0)) || die "$dup_bad messages were delivered twice without a reason: $(join -v1 "$TMP/dups" "$TMP/uncertain" | join -v1 - "$TMP/a-held" | head -5 | tr '\n' ' ')"
((extra_bad == 0)) || die "$extra_bad messages never accepted were delivered"
grep -q '451' "$TMP/kill.json" && grep -Eq '"(errors|retry_errors)":\{[^}]*"451"' "$TMP/kill.json" &&
	die "the load from $CLIENT was rate limited: $(cat "$TMP/kill.json")"

# --- 4. the real client address in the logs -------------------------------------------------
cat "$TMP/a/relay.log" "$TMP/b/relay.log" | grep 'message accepted' >"$TMP/accepted.log"
n_real=$(grep -c "client=$CLIENT\b" "$TMP/accepted.log" || true)
n_proxy=$(grep -c "$PROXYSRC" "$TMP/accepted.log" || true)
echo "logs: $n_real 'message accepted' lines with client=$CLIENT, $n_proxy naming $PROXYSRC (a: $(grep -c 'message accepted' "$TMP/a/relay.log"), b: $(grep -c 'message accepted' "$TMP/b/relay.log"))"
((n_real >= n_acc)) || die "only $n_real accepted messages are logged with client=$CLIENT (want >= $n_acc): $(grep -v "client=$CLIENT" "$TMP/accepted.log" | head -n2)"
((n_proxy == 0)) || die "the logs name HAProxy's address $PROXYSRC as the client: $(grep "$PROXYSRC" "$TMP/accepted.log" | head -n2)"

# --- 5. rolling config change and the per-client rate limit ---------------------------------
base=$(sink_count)
reload_all "$RATE"
echo "rate: rate_per_network = \"$RATE\" rolled out (TOML rewritten, SIGHUP a, then b: $(grep reload "$TMP/b/relay.log" | tail -n1 | cut -c1-120))"
load "$TMP/rate-other.json" -addr "127.0.0.1:$FRONT" -source "$OTHER" -n 40 -c 4 -size 2000 -json || true
ok_other=$(json "$TMP/rate-other.json" ok)
r451=$(grep -Eo '"errors":\{[^}]*\}' "$TMP/rate-other.json" | grep -Eo '"451":[0-9]+' | cut -d: -f2 || true)
load "$TMP/rate-client.json" -addr "127.0.0.1:$FRONT" -source "$CLIENT" -n 10 -c 2 -size 2000 -json ||
	die "$CLIENT was limited after $OTHER went over the limit: $(cat "$TMP/rate-client.json")"
lim_ip=$(grep -h 'code=451.*rate limit' "$TMP/a/relay.log" "$TMP/b/relay.log" | grep -Eo 'client=[^ ]+' | sort -u | tr '\n' ' ')
echo "      $OTHER: $ok_other of 40 accepted, ${r451:-0} refused 451 (logged for: $lim_ip); $CLIENT then: $(json "$TMP/rate-client.json" ok) of 10 accepted"
((${r451:-0} >= 10 && ok_other <= 25)) || die "$OTHER was not limited as configured: $(cat "$TMP/rate-other.json")"
[[ $lim_ip == "client=$OTHER " ]] || die "rate-limit refusals logged for '$lim_ip', want only client=$OTHER"
# The reply text itself, seen by a client through HAProxy (a new connection: the next instance).
if command -v swaks >/dev/null 2>&1; then
	reply=$(swaks --server "127.0.0.1:$FRONT" --local-interface "$OTHER" --from a@x.example --to b@dest.example \
		--suppress-data 2>&1 | grep -Eo '451 4\.7\.1[^[:cntrl:]]*' | head -n1 || true)
	[[ -n $reply ]] || die "swaks from $OTHER did not get 451 4.7.1"
	echo "      swaks from $OTHER: $reply"
fi
wait_sink $((base + ok_other + 10))
reload_all ""
echo "      limit removed again (rolling SIGHUP)"

# --- 6. throughput: 1 instance direct, 1 behind HAProxy, 2 behind HAProxy -------------------
# tput NAME ADDR: 200 untimed messages, then the timed relay-load run; sets TP_ACC (msg/s
# until the last 250) and TP_E2E (msg/s from the first send to the last message at the sink).
tput() {
	local base t0 t1
	base=$(($(sink_count) + 200))
	load "$TMP/$1.json" -addr "$2" -source "$CLIENT" -n 200 -c "$C" -size "$S" -json ||
		die "$1: warm-up failed: $(cat "$TMP/$1.json")"
	wait_sink "$base"
	t0=$(date +%s%N)
	load "$TMP/$1.json" -addr "$2" -source "$CLIENT" -n "$N" -c "$C" -size "$S" -json ||
		die "$1: relay-load reported failures: $(cat "$TMP/$1.json")"
	wait_sink $((base + N))
	t1=$(date +%s%N)
	TP_E2E=$(awk -v n="$N" -v d=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
	TP_ACC=$(json "$TMP/$1.json" msg_per_sec)
}
tput one-direct "127.0.0.1:${SPORT[a]}"
one_acc=$TP_ACC one_e2e=$TP_E2E
hacli "disable server relays/b" >/dev/null
tput one-haproxy "127.0.0.1:$FRONT"
oneha_acc=$TP_ACC oneha_e2e=$TP_E2E
hacli "enable server relays/b" >/dev/null
wait_states "a=UP b=UP "
tput two-haproxy "127.0.0.1:$FRONT"
two_acc=$TP_ACC two_e2e=$TP_E2E
queue_empty a
queue_empty b
echo "throughput (N=$N C=$C S=${S}B, msg/s accepted | end to end at the sink):"
printf '      1 instance, direct        %7.0f | %7.0f\n' "$one_acc" "$one_e2e"
printf '      1 instance, via HAProxy   %7.0f | %7.0f\n' "$oneha_acc" "$oneha_e2e"
printf '      2 instances, via HAProxy  %7.0f | %7.0f\n' "$two_acc" "$two_e2e"
awk -v a="$two_e2e" -v b="$one_e2e" -v c="$oneha_e2e" -v cores="$(nproc)" 'BEGIN {
	printf "      ratio 2 vs 1 end to end: %.2f (vs 1 direct), %.2f (vs 1 via HAProxy)", a / b, a / c
	if (cores <= 4) printf "; on %d cores shared by both relays, HAProxy, relay-load and the sink, little gain is expected: the instances compete for the same CPUs and disk", cores
	printf "\n"
}'

echo "PASS: $N_KILL messages through HAProxy with relay a killed at $acc_at_kill accepted: all $n_acc accepted delivered," \
	"$n_dups duplicates (allowed), real client in the logs, per-client rate limit behind one proxy address;" \
	"$((SECONDS - T0)) s"
