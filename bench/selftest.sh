#!/bin/sh
# selftest.sh: the bench's one ctest. Runs stun-load for about a second over
# UDP and then TCP against the reflector and fails if any response was invalid
# or none was valid. A behaviour check of the generator, never a timing.
# usage: selftest.sh STUN-LOAD REFLECTOR
set -eu
load=$1
refl=$2
tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Port 0: the reflector picks a free port and says which, so parallel tests
# never collide.
"$refl" --listen 127.0.0.1:0 >"$tmp/out" &
pid=$!
addr=
i=0
while [ $i -lt 100 ]; do
    addr=$(sed -n 's/^listening //p' "$tmp/out")
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "reflector died" >&2; exit 1; }
    i=$((i + 1))
    sleep 0.05
done
[ -n "$addr" ] || { echo "reflector did not start" >&2; exit 1; }

for tr in udp tcp; do
    "$load" --$tr --server "$addr" --sockets 2 --window 8 --warmup 0.1 --duration 1 --check
done
