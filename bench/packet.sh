#!/usr/bin/env bash
# Packet-mode benchmark: iperf3 throughput and connections/s through bascule's nat and dsr
# services against plain routing, inside the netns testbed. Root; run by hand, never in tests.
# Arguments pass through to bench/packet.py (--seconds, --connections, --threads, --modes, --json).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
export PATH="$PATH:/usr/sbin:/sbin"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/packet.sh: needs root (network namespaces, nftables)" >&2
    exit 1
fi
missing=()
for tool in iperf3 nft ip conntrack; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    pkgs=()
    for tool in "${missing[@]}"; do
        case "$tool" in
            nft) pkgs+=(nftables) ;;
            ip) pkgs+=(iproute2) ;;
            *) pkgs+=("$tool") ;;
        esac
    done
    echo "bench: installing ${pkgs[*]}" >&2
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
fi
[ -x "$root/.venv/bin/python" ] || make -C "$root" .venv/.installed-stamp
exec "$root/.venv/bin/python" "$here/packet.py" "$@"
