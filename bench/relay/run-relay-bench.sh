#!/usr/bin/env bash
# run-relay-bench.sh BUILD_DIR [RUNS] [MIB]: the relay's figures. Starts
# coturn (turnserver) with TURN REST credentials, stops it by PID.
#   1. throughput through coturn on loopback vs a direct loopback connection;
#   2. time to a verified socket by relay at 0 ms (host loopback) and at
#      25 ms one-way, in a private network namespace (unshare -n, root)
#      whose loopback delays every packet 25 ms (the lab's netem-q on an
#      NFQUEUE: the kernel may lack sch_netem): every hop (peer -> coturn,
#      coturn -> client, client -> coturn) then takes 25 ms one way.
# Prints figures; asserts nothing.
set -euo pipefail
build=$(cd "${1:?usage: $0 BUILD_DIR [RUNS] [MIB]}" && pwd)
runs=${2:-20}
mib=${3:-256}
bench=$build/bench/relay/relay-bench
[ -x "$bench" ] || { echo "no $bench: build it first" >&2; exit 2; }
command -v turnserver >/dev/null || { echo "turnserver (coturn) is not installed" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/ntcp-relay-bench.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secret"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_turn PORT: turnserver in the background (its PID in $pid), polled until it accepts.
start_turn() {
  local port=$1 relay=$(( (RANDOM % 200) * 100 + 30000 ))
  turnserver -n --no-cli --no-tls --no-dtls -L 127.0.0.1 --listening-port "$port" \
    --relay-ip 127.0.0.1 --min-port "$relay" --max-port $((relay + 99)) \
    --use-auth-secret --static-auth-secret "$(cat "$work/secret")" --realm ntcp.bench \
    --allow-loopback-peers --log-file "$work/turn-$port.log" --simple-log \
    --pidfile "$work/turn-$port.pid" --userdb "$work/turn-$port.db" >/dev/null 2>&1 &
  pid=$!
  local end=$((SECONDS + 15))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    [ $SECONDS -lt $end ] || { echo "turnserver did not start" >&2; exit 1; }
    sleep 0.05   # polling a server's start, not waiting out a measurement
  done
}
stop_turn() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

echo "== throughput, loopback, $mib MiB one way"
P=$(free_port); start_turn "$P"
"$bench" throughput "127.0.0.1:$P" "$work/secret" "$mib"
echo "== time to a verified socket by relay, 0 ms (loopback), $runs runs"
"$bench" time "127.0.0.1:$P" "$work/secret" "$runs"
stop_turn

netemq=$build/lab/netem-q
if [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null && command -v nft >/dev/null && [ -x "$netemq" ]; then
  echo "== time to a verified socket by relay, 25 ms one-way per hop (netns + netem-q), $runs runs"
  export -f start_turn stop_turn free_port
  export work bench runs netemq
  unshare -n bash -c '
    set -euo pipefail
    ip link set lo up
    nft -f - <<NFT
table ip relaybench {
  chain q { }
  chain pre { type filter hook prerouting priority -300; iifname "lo" jump q; }
}
NFT
    extra=()
    nft add rule ip relaybench q queue num 1 bypass 2>/dev/null || extra=(-i ip:relaybench:q)
    "$netemq" -q 1 -d 25 -r "$work/netem.ready" "${extra[@]}" >"$work/netem.log" 2>&1 &
    npid=$!
    end=$((SECONDS + 5))
    until [ -e "$work/netem.ready" ]; do
      [ $SECONDS -lt $end ] || { echo "netem-q did not start" >&2; kill $npid; exit 1; }
      sleep 0.02   # polling a helper start, not waiting out a measurement
    done
    pid=""
    P=$(free_port); start_turn "$P"
    "$bench" time "127.0.0.1:$P" "$work/secret" "$runs" || true
    stop_turn
    kill $npid; wait $npid 2>/dev/null || true'
else
  echo "== 25 ms: skipped (needs root, unshare, nft and $netemq: build lab/)"
fi
