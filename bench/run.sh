#!/usr/bin/env bash
# run.sh — the relay side by side with Postfix + OpenDKIM and Haraka, through the shared
# benchmark (/work/shared/bench: smtp-source -> SUT -> smtp-sink, probes checked with dkimpy
# before timing), then the bare RSA-2048 signature time, for the CPU-per-message target.
#
#   bench/run.sh                          # ROUNDS=2 RUNS=2, the rows below, interleaved
#   ROWS='SUT=cmd N=1000 S=10' ROUNDS=1 RUNS=1 bench/run.sh    # a quick look
#
# Environment: SHARED (default ../shared from the repository root) holds bench/run-matrix.sh;
# ROUNDS, RUNS, ROWS and RESULTS are passed on to it. The relay is built into a temporary
# directory together with its keys and configs; the shared scripts are called in place.
# Every step is bounded by the shared scripts' timeouts; stop early with Ctrl-C (it reaches
# the whole process group, so the shared load.sh stops its SUT too).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
MATRIX=$SHARED/bench/run-matrix.sh
[[ -x $MATRIX ]] || { echo "run.sh: $MATRIX not found (set SHARED)" >&2; exit 1; }
command -v envsubst >/dev/null || { echo "run.sh: envsubst not found (apt-get install gettext-base)" >&2; exit 1; }

W=$(mktemp -d /tmp/relay-bench-sut.XXXXXX)
trap 'rm -rf "$W"' EXIT
trap 'exit 130' INT TERM

(cd "$ROOT" && go build -o "$W/relay" ./cmd/relay)

# RSA-2048 keys; each <domain>.txt is the record as opendkim-genkey writes it
# (SELECTOR._domainkey IN TXT ( "v=DKIM1; k=rsa; p=..." )), which the shared probe reads.
mkdir -p "$W/keys"
for ks in fallback.example:default allowed.example:bench; do
	d=${ks%%:*} sel=${ks#*:}
	"$W/relay" keygen -type rsa -bits 2048 -selector "$sel" -out "$W/keys/$d.pem" \
		>"$W/keys/$d.txt" 2>/dev/null
done

# The shared load.sh runs SUT_CMD with SUT_PORT and SUT_UPSTREAM_PORT set; the row may set
# RELAY_MODE. Each start gets a fresh spool, as each peer start gets a fresh queue.
export RELAY_W=$W
export SUT_CMD='mode=${RELAY_MODE:-spool}; conf=$RELAY_W/bench-$mode.toml
	RELAY_MODE=$mode envsubst "\${SUT_PORT} \${SUT_UPSTREAM_PORT} \${RELAY_MODE}" \
		<"'"$ROOT"'/bench/relay-bench.toml" >"$conf"
	rm -rf "${RELAY_W:?}/spool"
	exec "$RELAY_W/relay" serve -config "$conf"'
# The shared load.sh polls SUT_QUEUE_CMD between runs ("drain") until it prints 0: here the
# messages in the spool plus the relay's upstream connections left in CLOSE_WAIT. Each run
# (and the probe) stops its sink, so the pool's idle connections die with it, and until the
# pool's idle timeout (10 s) closes them, internal/deliver takes dead ones again: its retry
# "on a new connection" picks the next idle, equally dead, one (451 4.4.1 in direct mode, a
# 30 s deferral in spool mode). Waiting here keeps that out of the timed runs; the bug is
# reported in bench/RESULTS.md.
export SUT_QUEUE_CMD='mode=${RELAY_MODE:-spool}; conf=$RELAY_W/bench-$mode.toml
	port=$(sed -n "s/^address = \"127.0.0.1:\([0-9]*\)\"$/\1/p" "$conf")
	q=0
	[[ $mode == spool ]] && q=$("$RELAY_W/relay" queue -config "$conf" list | grep -vc -e "^ID" -e "queue is empty")
	w=$(awk -v r="$(printf "0100007F:%04X" "$port")" "NR > 1 && \$3 == r && \$4 == \"08\"" /proc/net/tcp | wc -l)
	echo $((q + w))'
export SUT_DKIM_KEYS=$W/keys
export SUT_LOGFILE=$W/relay.log

export ROUNDS=${ROUNDS:-2} RUNS=${RUNS:-2}
export RESULTS=${RESULTS:-/tmp/relay-bench-results-$(date -u +%Y%m%d-%H%M%S).jsonl}
export ROWS=${ROWS:-"SUT=postfix N=5000 S=10;\
SUT=haraka-queue N=5000 S=10;\
SUT=cmd N=5000 S=10 LABEL=relay-spool-n5000-s10k-c20;\
SUT=cmd N=5000 S=10 RELAY_MODE=direct LABEL=relay-direct-n5000-s10k-c20;\
SUT=cmd N=2000 S=100 LABEL=relay-spool-n2000-s100k-c20"}

echo "== run.sh: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
"$MATRIX"

echo
echo "==================== bare signature (internal/signer)"
(cd "$ROOT" && go test -run '^$' -bench 'BareSignature' -benchtime 3s ./internal/signer)
echo "results: $RESULTS"
