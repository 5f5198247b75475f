#!/usr/bin/env bash
# Release-build checks: bugs that only optimized code shows (a Swift 6.3.1 task-group miscompile crashed
# the cluster client's fan-out only with -O; see Scripts/repro/taskgroup-tuple-result.swift).
#   1. the Redis, Redis Cluster and reply-reader suites built with -c release (-enable-testing for
#      @testable imports), into .build-release;
#   2. redis-bench's cluster PING fan-out at concurrency 8 and 50 from the same release build (the
#      command that crashed).
set -euo pipefail
cd "$(dirname "$0")/.."

scratch=${RELEASE_SCRATCH_PATH:-.build-release}
log=/tmp/connpool-release.log
flags=(-c release -Xswiftc -enable-testing --scratch-path "$scratch")

echo "-- building tests and redis-bench (release)"
swift build "${flags[@]}" --build-tests > "$log" 2>&1 || { grep -E 'error:' "$log" | head -40; echo "release build failed"; exit 1; }
swift build "${flags[@]}" --product redis-bench >> "$log" 2>&1 || { grep -E 'error:' "$log" | head -40; echo "release build of redis-bench failed"; exit 1; }

echo "-- swift test -c release (Redis Cluster, Redis, reply reader)"
swift test "${flags[@]}" --skip-build --no-parallel --filter 'ConnPoolRedisClusterTests|ConnPoolRedisTests' > "$log.test" 2>&1 \
    || { grep -aE -A6 '^✘|recorded an issue|crashed|Fatal error' "$log.test" | head -120; echo "release tests failed"; exit 1; }
grep -aE '^(✔|✘) Test run|Executed [0-9]+ tests' "$log.test" | tail -3

echo "-- redis-bench --cluster 3 (PING fan-out to every primary, async, release)"
bin=$(swift build "${flags[@]}" --show-bin-path)
"$bin/redis-bench" --cluster 3 --workload ping --concurrency 8,50 --mode async --requests 20000 --no-compare > "$log.bench" 2>&1 \
    || { tail -60 "$log.bench"; echo "redis-bench --cluster crashed or failed"; exit 1; }
grep -E 'ping|PING' "$log.bench" | head -6
