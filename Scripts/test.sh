#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then
#   1. swift test, parallel as by default (every suite; Redis tests start their own redis-server on free
#      loopback ports),
#   2. the examples, built and run,
#   3. swift test --sanitize=thread (the whole suite under ThreadSanitizer),
#   4. the backend tests and the pool's lifetime tests under --sanitize=address,
#   5. the Redis and Redis Cluster suites and redis-bench's cluster fan-out from a release build
#      (Scripts/release-smoke.sh: bugs only optimized code shows),
#   6. a short fuzzing run.
# Step 1 runs in parallel, as a developer's plain `swift test` does: suites that assert deadlines, count
# the process's socket operations or start servers carry the `.processExclusive` trait
# (Tests/ConnPoolTestSupport/ProcessExclusive.swift) and take turns; the rest run beside them. The
# sanitizer runs stay --no-parallel: their instrumentation slows every thread 5-20x.
set -euo pipefail
cd "$(dirname "$0")/.."

Scripts/install-deps.sh

quiet() { grep -vE '^(\[[0-9]+/[0-9]+\]|Compiling|Building|Write|Emitting|warning: prohibited)' || true; }
# What failed, wherever it is in a long log: every failed test and recorded issue, with the lines after it.
failures() { echo "-- failures in $1:"; grep -aE -A6 '^✘|recorded an issue|XCTAssert|: error:|WARNING: ThreadSanitizer|ERROR: AddressSanitizer' "$1" | head -150 || true; }

echo "== swift test"
swift test > /tmp/connpool-test.log 2>&1 || { quiet < /tmp/connpool-test.log | tail -150; failures /tmp/connpool-test.log; echo "swift test failed"; exit 1; }
grep -E '^(✔|✘) (Suite|Test run)|Executed [0-9]+ tests' /tmp/connpool-test.log | tail -40

echo "== examples"
swift run RedisCounterExample
swift run TCPLineClientExample

echo "== swift test --sanitize=thread"
# The simulation runs 500 seeds here (10,000 in the plain run above): ThreadSanitizer makes each ~8x slower.
TSAN_OPTIONS="halt_on_error=1" CONNPOOL_SIM_SEEDS=500 swift test --no-parallel --sanitize=thread --scratch-path .build-tsan > /tmp/connpool-tsan.log 2>&1 \
    || { quiet < /tmp/connpool-tsan.log | tail -100; failures /tmp/connpool-tsan.log; echo "swift test --sanitize=thread failed"; exit 1; }
grep -E '^(✔|✘) (Suite|Test run)|Executed [0-9]+ tests' /tmp/connpool-tsan.log | tail -40

echo "== swift test --sanitize=address (backends, pool lifetime)"
LSAN_OPTIONS="suppressions=$PWD/Scripts/lsan.supp:print_suppressions=0" \
    swift test --no-parallel --sanitize=address --scratch-path .build-asan \
    --filter 'ConnPoolRedisTests|ConnPoolTCPTests|ConnPoolIOTests|PoolLifetimeTests' > /tmp/connpool-asan.log 2>&1 \
    || { quiet < /tmp/connpool-asan.log | tail -100; failures /tmp/connpool-asan.log; echo "swift test --sanitize=address failed"; exit 1; }
grep -E '^(✔|✘) (Suite|Test run)|Executed [0-9]+ tests' /tmp/connpool-asan.log | tail -20

echo "== release build (Redis and Redis Cluster suites, redis-bench --cluster)"
Scripts/release-smoke.sh

echo "== fuzzing (short run: URL parser, configuration validation, TCP framing)"
Scripts/fuzz.sh 10
