#!/bin/bash
# The link emulator: with --delay D the round trip between two sites is about
# 2 x D (one delay per crossing of the internet); with --loss L about
# 1-(1-L)^2 of round trips are lost; and down leaves no emulator behind.
# Bounds are wide: this checks behaviour, not timing precision.
. "$(dirname "$0")/common.sh"
P=${NTCP_LAB_PREFIX_BASE:-ntl}t$$d
trap '"$LAB" down --prefix $P >/dev/null 2>&1' EXIT

"$LAB" up --prefix $P --a port-restricted --b port-restricted --delay 40 >/dev/null || fail "up with --delay"
PIDS=$(for n in $(ip netns list | awk '{print $1}' | grep "^$P-"); do ip netns pids $n; done)
[ -n "$PIDS" ] || fail "no netem-q running"
reflector $P server 203.0.113.10 >/dev/null
out=$("$LAB" exec --prefix $P a -- $PY "$PROBE" rtt --to 203.0.113.10:3478 --count 5 --interval 0.2) ||
	fail "no round trip through the delayed link: $out"
avg=$(json_field "$out" avg_ms | cut -d. -f1)
echo "delay 40 ms: $out"
[ "$avg" -ge 72 ] && [ "$avg" -le 400 ] || fail "rtt $avg ms is not about 2 x 40 ms"
"$LAB" down --prefix $P || fail "down"
for p in $PIDS; do
	wait_until 5 test ! -e /proc/$p -o "$(awk '{print $3}' /proc/$p/stat 2>/dev/null)" = Z ||
		fail "process $p survived down"
done

"$LAB" up --prefix $P --a none --b none --loss 30 --seed 7 >/dev/null || fail "up with --loss"
# The reflector's readiness check may itself lose packets: it retries.
reflector $P relay 203.0.113.20 >/dev/null
out=$("$LAB" exec --prefix $P server -- $PY "$PROBE" rtt --to 203.0.113.20:3478 --count 400 --interval 0.002)
lost=$(json_field "$out" loss_pct | cut -d. -f1)
echo "loss 30% per crossing: $out (expected about 51% of round trips lost)"
[ -n "$lost" ] && [ "$lost" -ge 35 ] && [ "$lost" -le 67 ] || fail "round-trip loss $lost% is not about 51%"
"$LAB" down --prefix $P || fail "down"
[ "$(ns_count $P)" = 0 ] || fail "namespaces left"
echo "PASS"
