#!/bin/bash
# ntcp-lab down: idempotent, removes every namespace and process a lab made,
# also after `up` was killed midway and after the state file was lost; and two
# labs with different prefixes live side by side.
. "$(dirname "$0")/common.sh"
B=${NTCP_LAB_PREFIX_BASE:-ntl}t; P1=$B$$a P2=$B$$b P3=$B$$c
trap '"$LAB" down --prefix $P1 >/dev/null 2>&1; "$LAB" down --prefix $P2 >/dev/null 2>&1; "$LAB" down --prefix $P3 >/dev/null 2>&1' EXIT

# 1. Kill `up` in the middle of building the topology.
"$LAB" up --prefix $P1 --a full-cone --b symmetric-seq --scenario double,public >/dev/null 2>&1 &
UP=$!
wait_until 20 test -e /run/netns/$P1-relay || fail "up did not start creating hosts"
kill -9 $UP; wait $UP 2>/dev/null
[ "$(ns_count $P1)" -gt 0 ] || fail "the killed up left nothing to clean (test is void)"
"$LAB" down --prefix $P1 || fail "down after a killed up failed"
[ "$(ns_count $P1)" = 0 ] || fail "namespaces of $P1 left after down"
[ ! -e /run/ntcp-lab/$P1.json ] || fail "state file of $P1 left after down"
"$LAB" down --prefix $P1 || fail "second down is not idempotent"

# 2. Two labs at once; the second one loses its state file (as after a
#    crash) while its link emulators and a reflector run in it.
"$LAB" up --prefix $P2 --a port-restricted --b fw >/dev/null || fail "up $P2"
"$LAB" up --prefix $P3 --a none --b full-cone --delay 5 >/dev/null || fail "up $P3"
reflector $P2 server 203.0.113.10 >/dev/null
reflector $P3 server 203.0.113.10 >/dev/null
PIDS=$(for n in $(ip netns list | awk '{print $1}' | grep "^$P3-"); do ip netns pids $n; done)
[ "$(echo $PIDS | wc -w)" -ge 5 ] || fail "expected netem-q processes and a reflector in $P3, got: $PIDS"
reach $P2 a 203.0.113.10 || fail "$P2: a cannot reach the server"
reach $P3 b 203.0.113.10 || fail "$P3: b cannot reach the server"
"$LAB" status --prefix $P2 | grep -q "a=port-restricted b=fw" || fail "status does not show the personalities"
rm -f /run/ntcp-lab/$P3.json
"$LAB" down --prefix $P3 || fail "down without state failed"
[ "$(ns_count $P3)" = 0 ] || fail "namespaces of $P3 left after down"
for p in $PIDS; do
	wait_until 5 test ! -e /proc/$p -o "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" = Z ||
		fail "process $p of $P3 survived down"
done
# The other lab is untouched.
reach $P2 b 203.0.113.10 || fail "down of $P3 broke $P2"
"$LAB" down --prefix $P2 && "$LAB" down --prefix $P2 || fail "down $P2"
[ "$(ns_count $P2)" = 0 ] || fail "namespaces of $P2 left"
echo "PASS"
