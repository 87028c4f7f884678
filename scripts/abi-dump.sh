#!/usr/bin/env bash
# Writes the ABI baseline abi/ntcp.abi from a built libntcp.so (abidw, Debian
# abigail-tools): run it when a release fixes the ABI, or after moving the
# SONAME (NTCP_SOVERSION). The build must have debug information
# (RelWithDebInfo, the default).
# usage: scripts/abi-dump.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
lib=$(readlink -f "$build/src/libntcp.so")
[ -f "$lib" ] || { echo "abi-dump: no $build/src/libntcp.so (build first)" >&2; exit 1; }
abidw --headers-dir include --drop-private-types --no-corpus-path --no-comp-dir-path \
      --suppressions abi/ntcp.abignore \
      --out-file abi/ntcp.abi "$lib"
echo "abi-dump: abi/ntcp.abi from $(basename "$lib") ($(grep -o "soname='[^']*'" abi/ntcp.abi))"
