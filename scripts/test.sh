#!/usr/bin/env bash
# Runs every ntcp test: installs what is missing, builds the normal, the
# sanitizer (ASan + UBSan) and the fuzzing configurations, runs ctest in the
# first two and every fuzzer for NTCP_FUZZ_SECONDS (40 by default: nine
# targets, and a full run stays well under 30 minutes). The soak runs in the
# sanitizer build only (its leak check is the point).
# Root-only tests (lab, raw sockets, namespaces) are skipped without root,
# each with its reason printed. Ends with "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
jobs=$(nproc)
fuzz_seconds=${NTCP_FUZZ_SECONDS:-40}

bash scripts/install-deps.sh

step() { printf '\n=== %s\n' "$*"; }

step "build (RelWithDebInfo) in build/"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"

step "build (ASan + UBSan) in build-asan/"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNTCP_SANITIZE=ON -DCMAKE_C_COMPILER=clang >/dev/null
cmake --build build-asan -j"$jobs"

step "build (libFuzzer) in build-fuzz/"
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNTCP_FUZZ=ON -DCMAKE_C_COMPILER=clang >/dev/null
fuzz_targets=$(cmake --build build-fuzz --target help | sed -n 's/^\.\.\. \(fuzz_[a-z0-9_]*\)$/\1/p')
[ -n "$fuzz_targets" ] && cmake --build build-fuzz -j"$jobs" --target $fuzz_targets

status=0
step "ctest: every test but the soak, normal build"
ctest --test-dir build -LE soak --output-on-failure --output-junit "$top/build/junit.xml" || status=1

step "ctest: unit and server tests, and the soak, under ASan + UBSan"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan -L 'unit|server|soak' --output-on-failure --output-junit "$top/build-asan/junit.xml" || status=1

step "fuzzing: each target for ${fuzz_seconds}s"
fuzz_status=0
bash scripts/fuzz.sh build-fuzz "$fuzz_seconds" || { status=1; fuzz_status=1; }

step "summary"
/usr/bin/python3 scripts/junit-summary.py build/junit.xml build-asan/junit.xml --extra-failed "$fuzz_status"
exit $status
