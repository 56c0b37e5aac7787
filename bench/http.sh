#!/usr/bin/env bash
# HTTP benchmark of bascule against haproxy and nginx (`make bench`).
# Installs haproxy, nginx and wrk when missing, then hands over to bench/http_bench.py
# (system python3, standard library only). Arguments pass through: see
# `bash bench/http.sh --help` and bench/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for tool in haproxy nginx wrk taskset; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        case "$tool" in
            taskset) missing+=(util-linux) ;;
            *) missing+=("$tool") ;;
        esac
    fi
done

if ((${#missing[@]})); then
    echo "bench: installing ${missing[*]}" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

python="/usr/bin/python3"
[ -x "$python" ] || python="python3"
exec "$python" "$here/http_bench.py" "$@"
