#!/usr/bin/env bash
# Time from ntcp_connect() to a verified socket, per NAT pair, in the lab at
# 25 ms one-way between the sites (issue 6, "Speed"). For each pair: a lab,
# ntcp-stuntd and ntcp-brokerd on its server host, `connect-bench serve` in
# site b, `connect-bench connect` in site a (N connections, one after the
# other, on a context that has already discovered its NAT and registered).
# Prints one line per pair: median and p90 in ms and in round trips (the
# broker's measure of a's RTT, which in the lab equals the a-b RTT).
#
#   bench/connect/run-connect-bench.sh [BUILD_DIR] [--count N] [--delay MS]
#                                      [--pairs "a:b[:syn] ..."] [--json FILE]
# Needs root (network namespaces). Builds nothing.
set -euo pipefail
build=build
count=20
delay=25
json=""
pairs="none:none full-cone:full-cone restricted-cone:restricted-cone port-restricted:port-restricted full-cone:port-restricted restricted-cone:port-restricted fw:fw port-restricted:symmetric-seq symmetric-seq:symmetric-seq:drop"
while [ $# -gt 0 ]; do
  case $1 in
    --count) count=$2; shift 2 ;;
    --delay) delay=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "run-connect-bench: unknown option $1" >&2; exit 2 ;;
    *) build=$1; shift ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "run-connect-bench: needs root (network namespaces)" >&2; exit 2; }
build=$(cd "$build" && pwd)
LAB=$build/lab/ntcp-lab
BENCH=$build/bench/connect/connect-bench
STUNTD=$build/cmd/ntcp-stuntd
BROKERD=$build/src/broker/ntcp-brokerd
for f in "$LAB" "$BENCH" "$STUNTD" "$BROKERD"; do
  [ -x "$f" ] || { echo "run-connect-bench: $f missing: build first" >&2; exit 2; }
done
[ -n "$json" ] && : >"$json"

prefix=""; pids=()
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  pids=()
  [ -n "$prefix" ] && "$LAB" down --prefix "$prefix" >/dev/null 2>&1
  prefix=""
  return 0
}
trap cleanup EXIT
keys=$(mktemp -d)

echo "time from ntcp_connect() to a verified socket, $count connections per pair, ${delay} ms one-way"
for pair in $pairs; do
  IFS=: read -r pa pb syn <<<"$pair"
  syn=${syn:-drop}
  prefix=$("$LAB" up --a "$pa" --b "$pb" --syn "$syn" --delay "$delay" --prefix cb)
  "$LAB" exec --prefix "$prefix" server -- "$STUNTD" --primary 203.0.113.10:3478 \
    --alternate 203.0.113.11:3479 --udp-rate 0 --cb-rate 0 --log-level error & pids+=($!)
  "$LAB" exec --prefix "$prefix" server -- "$BROKERD" --listen 203.0.113.10:3490 \
    --udp 203.0.113.10:3490 --quiet & pids+=($!)
  sleep 0.3
  "$LAB" exec --prefix "$prefix" b -- "$BENCH" serve --id bob --broker server:3490 \
    --stun server --key "$keys/bob-$pair.key" 2>/dev/null & pids+=($!)
  sleep 1.5
  args=(connect --id alice --broker server:3490 --stun server --key "$keys/alice-$pair.key"
        --peer bob --count "$count" --label "$pa <-> $pb (syn $syn)")
  if [ -n "$json" ]; then
    "$LAB" exec --prefix "$prefix" a -- "$BENCH" "${args[@]}" --json 2>/dev/null | tee -a "$json" || true
  else
    "$LAB" exec --prefix "$prefix" a -- "$BENCH" "${args[@]}" 2>"${NTCP_BENCH_LOG:-/dev/null}" || true
  fi
  cleanup
done
rm -rf "$keys"
