#!/usr/bin/env bash
# The main job, as far as ntcp goes today: builds everything, then
#  1. starts ntcp-stuntd on loopback (127.0.0.1 and 127.0.0.2, two ports) and
#     queries it with `ntcp stun`: UDP, TCP, RFC 5780 change requests, an
#     RFC 3489 request, and the STUNT connect-back test;
#  2. as root, brings up the lab (real NATs in network namespaces: site a
#     behind a port-restricted cone NAT, site b behind a symmetric NAT with
#     sequential ports, 25 ms on each internet link), runs ntcp-stuntd on the
#     lab's server host and `ntcp discover` in both clients;
#  3. as root, lets two peers behind those NATs find each other through
#     ntcp-brokerd and connect over TCP (the traversal engine's lab program).
# Every process it starts is stopped by PID; the lab is taken down.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
echo "== building (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/tmp/ntcp-demo-build.log 2>&1 || {
  tail -n 40 /tmp/ntcp-demo-build.log >&2; exit 1; }

NTCP=$PWD/build/cmd/ntcp
STUNTD=$PWD/build/cmd/ntcp-stuntd
LAB=$PWD/build/lab/ntcp-lab
port=${NTCP_DEMO_PORT:-34780}
alt=$((port + 1))
server_pid=""
lab_server_pid=""
lab_prefix=""

cleanup() {
  set +e  # a failed kill or wait must not stop the cleanup
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$lab_server_pid" ] && kill "$lab_server_pid" 2>/dev/null && wait "$lab_server_pid" 2>/dev/null
  [ -n "$lab_prefix" ] && "$LAB" down --prefix "$lab_prefix" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT

# Polls until `ntcp stun` gets an answer from $1 (run through $2...), 10 s at most.
wait_answer() {
  local target=$1; shift
  for _ in $(seq 1 50); do
    "$@" "$NTCP" stun --timeout 200 "$target" >/dev/null 2>&1 && return 0
  done
  echo "demo: no answer from $target" >&2
  return 1
}

show() { printf '\n$ %s\n' "$*"; "$@"; }

echo
echo "== 1. ntcp-stuntd on loopback: 127.0.0.1:$port (primary), 127.0.0.2:$alt (alternate)"
"$STUNTD" --primary 127.0.0.1:$port --alternate 127.0.0.2:$alt --log-level warn &
server_pid=$!
wait_answer 127.0.0.1:$port env
show "$NTCP" stun 127.0.0.1:$port
show "$NTCP" stun --tcp 127.0.0.1:$port
show "$NTCP" stun --change both 127.0.0.1:$port
show "$NTCP" stun --rfc3489 127.0.0.1:$port
show "$NTCP" stun --tcp --connect-back both 127.0.0.1:$port
show "$NTCP" discover --server 127.0.0.1:$port -4
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""

echo
if [ "$(id -u)" -ne 0 ]; then
  echo "== 2. the lab needs root (network namespaces): skipped"
  exit 0
fi
echo "== 2. the lab: a behind a port-restricted cone NAT, b behind a symmetric NAT"
echo "      (sequential ports, delta 2), 25 ms one-way on each internet link"
lab_prefix=$("$LAB" up --a port-restricted --b symmetric-seq --delta 2 --syn rst --delay 25)
export NTCP_LAB_PREFIX=$lab_prefix
"$LAB" status
"$LAB" exec server -- "$STUNTD" --primary 203.0.113.10:3478 --alternate 203.0.113.11:3479 \
  --primary '[2001:db8::10]:3478' --alternate '[2001:db8::11]:3479' --log-level warn &
lab_server_pid=$!
wait_answer 203.0.113.10:3478 "$LAB" exec relay --
# `server` resolves to both of its families inside the lab (docs/lab.md).
for host in a b; do
  show "$LAB" exec $host -- "$NTCP" discover --server server
done
kill "$lab_server_pid"; wait "$lab_server_pid" 2>/dev/null || true; lab_server_pid=""
"$LAB" down --prefix "$lab_prefix" >/dev/null; lab_prefix=""

echo
echo "== 3. traversal: a (port-restricted) and b (symmetric, sequential ports) find each"
echo "      other through ntcp-brokerd and connect over TCP: discovery, broker session,"
echo "      the plan, the attempt engine, the key proof, then 1 MiB each way checked by"
echo "      SHA-256. (This is the engine's lab test program: the ntcp connect/listen"
echo "      commands and the ntcp_connect() API are not built yet.)"
show /usr/bin/python3 tests/engine/e2e_lab.py --lab "$LAB" --e2e "$PWD/build/tests/engine/e2e" \
  --stuntd "$STUNTD" --brokerd "$PWD/build/src/broker/ntcp-brokerd" --ntcp "$NTCP" \
  --pair port-restricted:symmetric-seq:drop
echo
echo "demo: done"
