# Shared helpers of the lab tests: the root check, failure reporting, a
# poll-with-deadline (tests wait for conditions, never for fixed times) and
# UDP round trips through the lab with lab/probe.py (no ping dependency).
if [ "$(id -u)" != 0 ]; then
	echo "SKIP: the lab needs root (network namespaces, nftables)"
	exit 77
fi
LAB=${1:?usage: $0 path/to/ntcp-lab}
PROBE=$(dirname "$LAB")/probe.py
PY=/usr/bin/python3
fail() { echo "FAIL: $*" >&2; exit 1; }
# wait_until SECONDS CMD...: true as soon as CMD succeeds, false at the deadline.
wait_until() {
	local end=$(( $(date +%s%N) / 1000000 + $1 * 1000 )); shift
	until "$@"; do
		[ $(( $(date +%s%N) / 1000000 )) -lt $end ] || return 1
		sleep 0.05
	done
}
ns_count() { ip netns list | awk '{print $1}' | grep -c "^$1-" || true; }
# reflector PREFIX HOST IP: starts a UDP/TCP reflector on IP:3478 in HOST,
# prints its PID once it answers.
reflector() {
	"$LAB" exec --prefix "$1" "$2" -- $PY "$PROBE" serve --ips "$3" --ports 3478 --duration 120 >/dev/null 2>&1 &
	local pid=$!
	wait_until 10 "$LAB" exec --prefix "$1" "$2" -- $PY "$PROBE" rtt --to "$3:3478" --count 1 --timeout 0.3 \
		>/dev/null 2>&1 || fail "reflector in $1 $2 did not start"
	echo $pid
}
# reach PREFIX HOST IP: one UDP round trip from HOST to a reflector on IP.
reach() {
	wait_until 5 "$LAB" exec --prefix "$1" "$2" -- $PY "$PROBE" rtt --to "$3:3478" --count 1 --timeout 0.5 \
		>/dev/null 2>&1
}
# json_field JSON KEY
json_field() { $PY -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
