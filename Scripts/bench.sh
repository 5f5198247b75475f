#!/usr/bin/env bash
# The main job: the Redis benchmark. Installs what it needs, builds in release and runs redis-bench,
# which starts a throwaway redis-server on a free loopback port and prints the results table.
# Extra arguments go to redis-bench (see `swift run -c release redis-bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/install-deps.sh
swift run -c release redis-bench "$@"
