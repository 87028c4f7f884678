#!/usr/bin/env bash
# The main job: builds everything, then
#  1. starts ntcp-stuntd on loopback (127.0.0.1 and 127.0.0.2, two ports) and
#     queries it with `ntcp stun`: UDP, TCP, RFC 5780 change requests, an
#     RFC 3489 request, and the STUNT connect-back test;
#  2. as root, brings up the lab (real NATs in network namespaces: site a
#     behind a port-restricted cone NAT, site b behind a symmetric NAT with
#     sequential ports, 25 ms on each internet link), runs ntcp-stuntd on the
#     lab's server host and `ntcp discover` in both clients;
#  3. as root, lets two peers behind those NATs find each other through
#     ntcp-brokerd and talk over TCP: `ntcp listen` in one site, `ntcp
#     connect` in the other; it prints the messages and which method won;
#  4. as root, a pair no direct method can traverse (a and b both behind
#     symmetric NATs with random ports): the broker offers coturn, run by
#     the lab on its relay host, and the two connect through it, saying so.
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
broker_pid=""
listen_pid=""

cleanup() {
  set +e  # a failed kill or wait must not stop the cleanup
  [ -n "$listen_pid" ] && kill "$listen_pid" 2>/dev/null && wait "$listen_pid" 2>/dev/null
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
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

# Stops the lab's broker and STUN server (by PID) and removes a step's files.
stop_lab_servers() {
  kill "$broker_pid" "$lab_server_pid" 2>/dev/null || true
  wait "$broker_pid" "$lab_server_pid" 2>/dev/null || true
  broker_pid=""; lab_server_pid=""
  rm -rf "$demo_home" "$out"
}

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

echo
echo "== 3. two peers behind those NATs find each other and talk over TCP"
echo "      ntcp-stuntd and ntcp-brokerd run on the lab's server host; bob (site b,"
echo "      symmetric NAT) runs \`ntcp listen\`, alice (site a, port-restricted) runs"
echo "      \`ntcp connect bob\`. Each discovers its NAT, registers its name and key"
echo "      with the broker; the broker times both ends; the library picks the methods,"
echo "      the first verified TCP connection wins, and the messages cross on it."
"$LAB" exec server -- "$PWD/build/src/broker/ntcp-brokerd" --listen 203.0.113.10:3490 \
  --udp 203.0.113.10:3490 --quiet &
broker_pid=$!
demo_home=$(mktemp -d)  # the peers' keys (~/.config/ntcp/NAME.key) live here
out=$(mktemp -d)
# bob sends one line; the connection ends when both have sent all (as nc).
echo "hello alice, this is bob (behind a symmetric NAT)" |
  HOME=$demo_home "$LAB" exec b -- "$NTCP" listen --id bob --stun server --broker server:3490 \
    --timeout 60000 >"$out/bob.txt" 2>"$out/bob.log" &
listen_pid=$!
# alice connects once bob is registered (its first line says so).
for _ in $(seq 1 100); do grep -q listening "$out/bob.log" 2>/dev/null && break; sleep 0.1; done
printf '\n$ echo "hello bob, ..." | ntcp connect --id alice --stun server --broker server:3490 --json bob\n'
rc=0
echo "hello bob, this is alice (behind a port-restricted NAT)" |
  HOME=$demo_home "$LAB" exec a -- "$NTCP" connect --id alice --stun server --broker server:3490 \
    --json bob >"$out/alice.txt" 2>"$out/alice.json" || rc=$?
wait "$listen_pid" || true
echo "bob's log:";      sed 's/^/  /' "$out/bob.log"
echo "alice received:"; sed 's/^/  /' "$out/alice.txt"
echo "bob received:";   sed 's/^/  /' "$out/bob.txt"
echo "alice's status line (--json):"
sed 's/^/  /' "$out/alice.json"
python3 - "$out/alice.json" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
if s["ok"]:
    print(f"  -> connected by {s['method']}: {s['local']} -> {s['remote']} "
          f"(alice's public {s['public']}, bob's {s['peer_public']}), broker answer at "
          f"{s['broker_ms']} ms, TCP at {s['connected_ms']} ms, key proof done at "
          f"{s['verified_ms']} ms after the call (discovery and registration included)")
else:
    print(f"  -> no connection: {s['error']}: {s['detail']}")
PY
stop_lab_servers
[ "$rc" -eq 0 ] || { echo "demo: ntcp connect failed (exit $rc)" >&2; exit 1; }
"$LAB" down --prefix "$lab_prefix" >/dev/null; lab_prefix=""

echo
echo "== 4. the relay of last resort (docs/relay.md): a and b both behind symmetric"
echo "      NATs with random ports. No direct method can work;"
echo "      the lab runs coturn on its relay host, the broker hands each end"
echo "      time-limited TURN credentials, and the connection goes through coturn,"
echo "      with the key proof end to end."
if ! command -v turnserver >/dev/null; then
  echo "   coturn's turnserver is not installed: skipped"
  echo; echo "demo: done"; exit 0
fi
lab_prefix=$("$LAB" up --a symmetric-random --b symmetric-random --syn drop --turn)
export NTCP_LAB_PREFIX=$lab_prefix
"$LAB" status | grep -E "site|TURN|turnserver"
secret_file=$("$LAB" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["turn"]["secret_file"])')
"$LAB" exec server -- "$STUNTD" --primary 203.0.113.10:3478 --alternate 203.0.113.11:3479 \
  --log-level warn &
lab_server_pid=$!
wait_answer 203.0.113.10:3478 "$LAB" exec relay --
"$LAB" exec server -- "$PWD/build/src/broker/ntcp-brokerd" --listen 203.0.113.10:3490 \
  --udp 203.0.113.10:3490 --turn-server 203.0.113.20:3478 --turn-secret-file "$secret_file" --quiet &
broker_pid=$!
demo_home=$(mktemp -d)
out=$(mktemp -d)
# Each end keeps its side open until the other's line has come: a TURN
# relay carries no half-close (docs/relay.md).
( echo "hello alice, this is bob (symmetric NAT, random ports)"
  for _ in $(seq 1 300); do grep -q . "$out/bob.txt" 2>/dev/null && break; sleep 0.1; done ) |
  HOME=$demo_home "$LAB" exec b -- "$NTCP" listen --id bob --stun server --broker server:3490 \
    --timeout 60000 >"$out/bob.txt" 2>"$out/bob.log" &
listen_pid=$!
for _ in $(seq 1 100); do grep -q listening "$out/bob.log" 2>/dev/null && break; sleep 0.1; done
printf '\n$ echo "hello bob, ..." | ntcp connect --id alice --stun server --broker server:3490 --json bob\n'
rc=0
( echo "hello bob, this is alice (symmetric NAT, random ports)"
  for _ in $(seq 1 300); do grep -q . "$out/alice.txt" 2>/dev/null && break; sleep 0.1; done ) |
  HOME=$demo_home "$LAB" exec a -- "$NTCP" connect --id alice --stun server --broker server:3490 \
    --json bob >"$out/alice.txt" 2>"$out/alice.json" || rc=$?
wait "$listen_pid" || true; listen_pid=""
echo "bob's log:";      sed 's/^/  /' "$out/bob.log"
echo "alice received:"; sed 's/^/  /' "$out/alice.txt"
echo "bob received:";   sed 's/^/  /' "$out/bob.txt"
python3 - "$out/alice.json" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
if s["ok"]:
    print(f"  -> connected by {s['method']} through {s.get('relay', '?')}: {s['local']} -> "
          f"{s['remote']}, key proof done at {s['verified_ms']} ms after the call")
    print(f"     ({s['detail']})")
else:
    print(f"  -> no connection: {s['error']}: {s['detail']}")
PY
stop_lab_servers
[ "$rc" -eq 0 ] || { echo "demo: ntcp connect through the relay failed (exit $rc)" >&2; exit 1; }
echo
echo "demo: done"
