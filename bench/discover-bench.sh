#!/usr/bin/env bash
# discover-bench.sh [BUILD_DIR] [RUNS]: how long a full UDP+TCP discovery
# (IPv4) takes in the lab at 25 ms one-way delay, behind each NAT
# personality and SYN answer; prints per client the median and worst time in
# ms and in round trips, against the goal of 1.5 s. Needs root (the lab).
# A benchmark: it prints figures and asserts nothing.
set -euo pipefail
build=${1:-build}
runs=${2:-5}
build=$(cd "$build" && pwd)
lab=$build/lab/ntcp-lab
ntcp=$build/cmd/ntcp
stuntd=$build/cmd/ntcp-stuntd
[ "$(id -u)" -eq 0 ] || { echo "discover-bench: needs root (the lab)"; exit 77; }
for f in "$lab" "$ntcp" "$stuntd"; do
  [ -x "$f" ] || { echo "discover-bench: $f missing: build first"; exit 1; }
done

prefix=""
server_pid=""
cleanup() {
  set +e  # a failed kill or wait must not stop the cleanup
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$prefix" ] && "$lab" down --prefix "$prefix" >/dev/null 2>&1
  return 0
}
trap cleanup EXIT

# "in RTTs" is the median time over the measured round trip: most of it is
# the wait that proves a negative (nothing came from the other address).
printf '%-18s %-5s %9s %9s %8s %8s  %s\n' personality syn "median" "worst" "rtt" "in RTTs" "goal 1.5 s"
for cfg in "full-cone port-restricted rst" "restricted-cone symmetric-seq icmp" \
           "port-restricted symmetric-random drop" "none fw drop"; do
  set -- $cfg
  prefix=$("$lab" up --a "$1" --b "$2" --syn "$3" --delay 25)
  export NTCP_LAB_PREFIX=$prefix
  "$lab" exec server -- "$stuntd" --primary 203.0.113.10:3478 --alternate 203.0.113.11:3479 \
    --udp-rate 0 --cb-rate 0 --log-level error 2>/dev/null &
  server_pid=$!
  for _ in $(seq 1 50); do
    "$lab" exec relay -- "$ntcp" stun --timeout 200 203.0.113.10:3478 >/dev/null 2>&1 && break
  done
  for site in a b; do
    pers=$1; [ $site = b ] && pers=$2
    times=(); rtt=0
    for _ in $(seq 1 "$runs"); do
      out=$("$lab" exec $site -- "$ntcp" discover --json -4 --server 203.0.113.10 || true)
      t=$(printf '%s' "$out" | /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["elapsed_ms"], j["rtt_ms"])')
      times+=("${t% *}"); rtt=${t#* }
    done
    sorted=($(printf '%s\n' "${times[@]}" | sort -n))
    med=${sorted[$(( ${#sorted[@]} / 2 ))]}
    worst=${sorted[-1]}
    rts=$(awk -v m="$med" -v r="$rtt" 'BEGIN { printf "%.1f", (r > 0 ? m / r : 0) }')
    verdict=$([ "$worst" -le 1500 ] && echo met || echo MISSED)
    printf '%-18s %-5s %7s ms %7s ms %5s ms %8s  %s\n' "$pers" "$3" "$med" "$worst" "$rtt" "$rts" "$verdict"
  done
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
  "$lab" down --prefix "$prefix" >/dev/null; prefix=""
done
