#!/usr/bin/env bash
# Installs the Debian packages connpool needs, if any is missing:
#   libhiredis-dev  (CHiredis, the Redis backend)    pkg-config (finds hiredis and OpenSSL)
#   libssl-dev      (COpenSSL: TLS for both backends)  openssl (the CLI: tests make their certificates)
#   redis-server, redis-tools (tests, redis-bench, redis-benchmark baseline)
#   prometheus      (promtool, to validate the Prometheus exposition in tests)
set -euo pipefail

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists hiredis 2>/dev/null || missing+=(libhiredis-dev)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-tools)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package starts no server here (no systemd), and we never use a system-wide one: tests and
# redis-bench start throwaway redis-server processes on free loopback ports.
