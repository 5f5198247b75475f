#!/usr/bin/env bash
# Builds the libFuzzer targets in Fuzz/ and runs each for a bounded time; fails on a crash.
#
#   Scripts/fuzz.sh            # 20 s per target (cheap enough for CI)
#   Scripts/fuzz.sh 600        # 10 minutes per target
#   FUZZ_TARGETS="RedisURL" Scripts/fuzz.sh 60
#
# Targets (Fuzz/<name>/main.swift, seeds in Fuzz/Corpus/<name>/):
#   RedisURL           RedisConnectionConfiguration(url:): never crashes; no password in any description
#   PoolConfiguration  PoolConfiguration.validate() on random fields: never crashes; a valid one makes a pool
#   TCPFraming         ConnPoolTCP's delimiter framing on random chunks: frames == the stream split at the delimiter
#
# How: the modules under test (ConnPool, ConnPoolRedis, ConnPoolTCP and their dependencies) are built
# by SwiftPM with `-sanitize=fuzzer,address -enable-testing` into .build-fuzz; each target's main.swift
# (`@testable import`, an `@_cdecl("LLVMFuzzerTestOneInput")` entry point) is then compiled and linked
# against those objects by swiftc with `-sanitize=fuzzer,address`, which brings libFuzzer's main from
# the toolchain (lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a).
#
# Each run starts from a copy of the seed corpus in a temporary directory (the repository's corpus is
# never written); crash artifacts go to $FUZZ_OUT (default: a new /tmp/connpool-fuzz.XXXXXX).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
targets=${FUZZ_TARGETS:-"RedisURL PoolConfiguration TCPFraming"}
scratch=${FUZZ_SCRATCH_PATH:-.build-fuzz}
out=${FUZZ_OUT:-$(mktemp -d /tmp/connpool-fuzz.XXXXXX)}
mkdir -p "$out"

if ! pkg-config --exists hiredis 2>/dev/null; then
    Scripts/install-deps.sh
fi

started=$(date +%s)
echo "== fuzz: building the modules under test (instrumented) in $scratch"
flags=(-Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing)
for module in ConnPoolRedis ConnPoolTCP; do
    if ! swift build --scratch-path "$scratch" --target "$module" "${flags[@]}" >"$out/build-$module.log" 2>&1; then
        grep -E 'error:' "$out/build-$module.log" | head -n 40
        echo "fuzz: building $module failed (log: $out/build-$module.log)"
        exit 1
    fi
done
bin=$(swift build --scratch-path "$scratch" --show-bin-path)
modules=$bin/Modules
[[ -d "$modules" ]] || modules=$bin
# Every object of the library modules built above (no executable or test target is built here; the
# exclusions only guard against a scratch path that was also used for something else).
mapfile -t objects < <(find "$bin/" -path '*.build/*.o' -not -name '*.swiftmodule.o' -not -path '*Tests.build/*' \
    -not -path '*-tool.build/*' -not -path '*/redis_bench.build/*' -not -path '*Example.build/*' | sort)
if [[ ${#objects[@]} -eq 0 ]]; then echo "fuzz: no objects found under $bin"; exit 1; fi

# The C modules SwiftPM generated module maps for (CConnPoolIO): the Swift modules above import them, so
# the target's compile must find them too.
c_module_maps=()
while IFS= read -r map; do c_module_maps+=(-Xcc "-fmodule-map-file=$map"); done \
    < <(find "$bin/" -maxdepth 2 -path '*.build/module.modulemap' | sort)

for target in $targets; do
    echo "== fuzz: linking $target"
    if ! swiftc -sanitize=fuzzer,address -parse-as-library -g -module-name "Fuzz$target" \
        -I "$modules" -I Sources/CHiredis -I Sources/COpenSSL "${c_module_maps[@]}" "Fuzz/$target/main.swift" "${objects[@]}" \
        -lhiredis -lssl -lcrypto \
        -o "$out/fuzz-$target" >"$out/link-$target.log" 2>&1; then
        grep -vE 'ld.gold: warning: Cannot export local symbol' "$out/link-$target.log" | head -n 40
        echo "fuzz: building $target failed"
        exit 1
    fi
done
built=$(date +%s)
echo "== fuzz: build took $((built - started)) s"

# Crash reports from ASan (with the Swift stack symbolized) rather than from the Swift runtime's
# backtracer, which trips ASan while it reads the crashed thread's stack.
export SWIFT_BACKTRACE=${SWIFT_BACKTRACE:-enable=no}
export ASAN_OPTIONS=${ASAN_OPTIONS:-handle_sigill=1:handle_abort=1}
status=0
for target in $targets; do
    corpus=$(mktemp -d "$out/corpus-$target.XXXXXX")
    cp Fuzz/Corpus/"$target"/* "$corpus"/
    mkdir -p "$out/artifacts"
    echo "== fuzz: $target for $seconds s"
    log="$out/$target.log"
    if "$out/fuzz-$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$out/artifacts/$target-" "$corpus" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
        echo "fuzz: $target: OK, $runs runs, $rate exec/s, $cov, corpus $(ls "$corpus" | wc -l) inputs"
    else
        status=1
        echo "fuzz: $target: FAILED (log: $log, artifacts: $out/artifacts/)"
        grep -vE '^(#[0-9]+|INFO:)' "$log" | tail -n 40
    fi
done
echo "== fuzz: total $(($(date +%s) - started)) s (build $((built - started)) s); output in $out"
exit $status
