#!/usr/bin/env bash
# fuzz.sh BUILD_DIR SECONDS: runs every libFuzzer target of a -DNTCP_FUZZ=ON
# build for SECONDS each, two at a time, each on a scratch copy of its seed
# corpus (the committed corpus never grows). Prints one line per target with
# executions and coverage; exits non-zero, naming the crashing input, if any
# target finds a crash, a leak, a timeout or an out-of-memory.
set -uo pipefail

if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 BUILD_DIR SECONDS" >&2
  exit 2
fi
build=$(cd "$1" && pwd) || exit 2
seconds=$2
src=$(cd "$(dirname "$0")/.." && pwd)
fuzzdir=$src/tests/fuzz
parallel=${NTCP_FUZZ_JOBS:-2}

targets=()
for dir in "$fuzzdir"/corpus/*/; do
  name=$(basename "$dir")
  if [ ! -x "$build/tests/fuzz/$name" ]; then
    echo "fuzz: $name: no binary at $build/tests/fuzz/$name (configure with -DNTCP_FUZZ=ON and build it)" >&2
    exit 2
  fi
  targets+=("$name")
done
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no targets under $fuzzdir/corpus" >&2
  exit 2
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ntcp-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# Findings are kept in the build directory, where they outlive this script.
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
  local name=$1
  mkdir -p "$scratch/$name/corpus" "$artifacts/$name"
  cp "$fuzzdir/corpus/$name/"* "$scratch/$name/corpus/"
  local dict=()
  [ -f "$fuzzdir/stun.dict" ] && dict=(-dict="$fuzzdir/stun.dict")
  "$build/tests/fuzz/$name" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$name/" \
    "$scratch/$name/corpus" >"$scratch/$name/log" 2>&1
  echo $? >"$scratch/$name/rc"
}

# Two at a time: the machine has two cores.
running=0
for name in "${targets[@]}"; do
  if [ "$running" -ge "$parallel" ]; then
    wait -n
    running=$((running - 1))
  fi
  run_one "$name" &
  running=$((running + 1))
done
wait

status=0
for name in "${targets[@]}"; do
  log=$scratch/$name/log
  rc=$(cat "$scratch/$name/rc" 2>/dev/null || echo 1)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  # The last status line ("#N DONE cov: X ft: Y corp: ...") has the coverage.
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
  crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
  if [ "$rc" -eq 0 ]; then
    printf 'fuzz: %-20s ok     %s execs in %ss, cov %s, ft %s, corpus %s\n' \
      "$name" "${execs:-?}" "$seconds" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  else
    status=1
    printf 'fuzz: %-20s FAILED (exit %s) after %s execs, cov %s\n' \
      "$name" "$rc" "${execs:-?}" "${cov:-?}"
    if [ -n "$crash" ]; then
      echo "fuzz: $name: crashing input: $crash"
      echo "fuzz: $name: reproduce with: $build/tests/fuzz/$name $crash"
    fi
    # The sanitizer's report, or whatever the fuzzer said last.
    grep -m 1 -n -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|check failed' "$log" |
      sed "s/^/fuzz: $name: /" || true
    tail -n 25 "$log" | sed "s/^/    /"
  fi
done
exit $status
