#!/usr/bin/env bash
# Installs the system packages shieldwall builds and runs with. Idempotent: apt runs only
# when something is missing.
set -euo pipefail

PACKAGES=(clang-19 llvm-19 libbpf-dev libelf-dev zlib1g-dev bpftool iproute2 ethtool nftables
          iptables ipset xdp-tools make gcc pkg-config python3-venv python3-dev dnsmasq-base)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
