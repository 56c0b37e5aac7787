#!/usr/bin/env bash
# L4 TCP bulk throughput of bascule (splice and buffered relays) against haproxy `mode tcp`
# (with and without splice), measured with iperf3. Run by hand, never in the test suite.
# Arguments pass through to bench/l4_bench.py (`bash bench/l4.sh --help`), for example:
#   bash bench/l4.sh --rounds 3 --duration 10
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"
for tool in haproxy iperf3 nginx wrk taskset; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench: $tool is missing" >&2; exit 1; }
done
python="$here/../.venv/bin/python"  # the proxy process imports bascule
[ -x "$python" ] || make -C "$here/.." .venv/.installed-stamp
exec "$python" "$here/l4_bench.py" "$@"
