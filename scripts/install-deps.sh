#!/usr/bin/env bash
# Installs the Debian 12 packages ntcp's build, tests, lab and benchmarks need.
# Idempotent and non-interactive; prints nothing when everything is there.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libuv1-dev libssl-dev libinih-dev zlib1g-dev libpcap-dev libcmocka-dev
  libnetfilter-queue-dev libmnl-dev
  iproute2 nftables python3 procps util-linux
  coturn stun-client
  python3-pytest python3-twisted python3-venv
  abigail-tools debhelper dh-python lintian systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when an install from the current ones fails.
if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/ntcp-apt.log 2>&1; then
  apt-get update -q >>/tmp/ntcp-apt.log 2>&1 || true
  apt-get install -y -q --no-install-recommends "${missing[@]}" >>/tmp/ntcp-apt.log 2>&1 || {
    tail -n 30 /tmp/ntcp-apt.log >&2; exit 1; }
fi
# coturn's package may start a system turnserver; ntcp's tests start their own.
