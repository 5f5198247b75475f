#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then
#   1. swift test (every suite; Redis tests start their own redis-server on free loopback ports),
#   2. the examples, built and run,
#   3. swift test --sanitize=thread (the whole suite under ThreadSanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."

Scripts/install-deps.sh

echo "== swift test"
swift test 2>&1 | tee /tmp/connpool-test.log | grep -vE '^(\[[0-9]+/[0-9]+\]|Compiling|Building|Write|Emitting)' || { tail -50 /tmp/connpool-test.log; exit 1; }

echo "== examples"
swift run RedisCounterExample
swift run TCPLineClientExample

echo "== swift test --sanitize=thread"
TSAN_OPTIONS="halt_on_error=1" swift test --sanitize=thread --scratch-path .build-tsan 2>&1 | tee /tmp/connpool-tsan.log \
    | grep -vE '^(\[[0-9]+/[0-9]+\]|Compiling|Building|Write|Emitting)' || { tail -80 /tmp/connpool-tsan.log; exit 1; }
