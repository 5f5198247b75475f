#!/usr/bin/env bash
# Soak test (not CI): an hour-long (configurable) mixed load with periodic faults through the chaos
# engine (`redis-bench chaos`: GET/SET/INCR through the pool while the throwaway redis-server is
# SIGKILLed and restarted, SIGSTOPped, has its clients killed and sleeps in DEBUG SLEEP), sampling the
# load process's resident memory (VmRSS, with its anonymous and file-backed parts) and open file
# descriptors to a CSV every few seconds. At the
# end it says whether both stayed flat: after a warm-up, the mean of the last quarter of the samples is
# within a tolerance of the mean of the first quarter.
#
#   Scripts/soak.sh                       # 60 minutes, release build, a fault every 20 s
#   Scripts/soak.sh --minutes 10 --debug  # a shorter run on the debug build
#
# Options (environment variables in brackets):
#   --minutes N          load duration [SOAK_MINUTES, 60]
#   --interval S         seconds between samples [SOAK_INTERVAL, 5]
#   --fault-interval S   seconds between faults [SOAK_FAULT_INTERVAL, 20]
#   --warmup S           seconds of samples ignored before the comparison [SOAK_WARMUP, 60]
#   --rss-tolerance P    allowed RSS drift, percent [SOAK_RSS_TOLERANCE, 5]
#   --fd-tolerance N     allowed drift of the fd mean, in descriptors [SOAK_FD_TOLERANCE, 2]
#   --out DIR            where the CSV, the chaos report and the log go [SOAK_OUT, a new /tmp/connpool-soak.XXXXXX]
#   --debug              use the debug build (faster to build, slower to run)
#   --concurrency N      load tasks [SOAK_CONCURRENCY, 16]; --pool-size N [SOAK_POOL_SIZE, 8]
#   [SOAK_SCRATCH_PATH]  the SwiftPM scratch path of the build [.build-soak]
#
# Exit status: 0 when memory and descriptors stayed flat and the chaos invariants held, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${SOAK_MINUTES:-60}
interval=${SOAK_INTERVAL:-5}
fault_interval=${SOAK_FAULT_INTERVAL:-20}
warmup=${SOAK_WARMUP:-60}
rss_tolerance=${SOAK_RSS_TOLERANCE:-5}
fd_tolerance=${SOAK_FD_TOLERANCE:-2}
out=${SOAK_OUT:-}
configuration=release
concurrency=${SOAK_CONCURRENCY:-16}
pool_size=${SOAK_POOL_SIZE:-8}
scratch=${SOAK_SCRATCH_PATH:-.build-soak}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --interval) interval=$2; shift 2 ;;
        --fault-interval) fault_interval=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --rss-tolerance) rss_tolerance=$2; shift 2 ;;
        --fd-tolerance) fd_tolerance=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --debug) configuration=debug; shift ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --pool-size) pool_size=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "soak.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if ! command -v redis-server >/dev/null 2>&1; then
    Scripts/install-deps.sh
fi

if [[ -z "$out" ]]; then out=$(mktemp -d /tmp/connpool-soak.XXXXXX); fi
mkdir -p "$out"
csv="$out/samples.csv"
log="$out/chaos.log"
report="$out/chaos.json"

echo "== soak: building redis-bench ($configuration)"
if ! swift build -c "$configuration" --scratch-path "$scratch" --product redis-bench >"$out/build.log" 2>&1; then
    grep -E 'error:' "$out/build.log" | head -n 40
    echo "soak: the build failed (log: $out/build.log)"
    exit 1
fi
binary=$(swift build -c "$configuration" --scratch-path "$scratch" --show-bin-path)/redis-bench
# Run a private copy, so that a rebuild meanwhile cannot replace the executable under the process.
cp "$binary" "$out/redis-bench"

seconds=$((minutes * 60))
echo "== soak: $minutes min of load, a fault every $fault_interval s, a sample every $interval s -> $out"
"$out/redis-bench" chaos --duration "$seconds" --fault-interval "$fault_interval" \
    --concurrency "$concurrency" --pool-size "$pool_size" --json "$report" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' INT TERM

echo "elapsed_s,rss_kb,fds,threads,rss_anon_kb,rss_file_kb" >"$csv"
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    status_file=/proc/$pid/status
    rss=$(awk '/^VmRSS:/ {print $2}' "$status_file" 2>/dev/null || true)
    threads=$(awk '/^Threads:/ {print $2}' "$status_file" 2>/dev/null || true)
    anon=$(awk '/^RssAnon:/ {print $2}' "$status_file" 2>/dev/null || true)
    file=$(awk '/^RssFile:/ {print $2}' "$status_file" 2>/dev/null || true)
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    if [[ -n "$rss" && "$fds" -gt 0 ]]; then
        echo "$(($(date +%s) - start)),$rss,$fds,${threads:-0},${anon:-0},${file:-0}" >>"$csv"
    fi
    sleep "$interval"
done
chaos_status=0
wait "$pid" || chaos_status=$?
trap - INT TERM

echo "== soak: chaos summary"
grep -vE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' "$log" | tail -n 40

echo "== soak: resources ($csv)"
flat_status=0
awk -F, -v warmup="$warmup" -v rss_tol="$rss_tolerance" -v fd_tol="$fd_tolerance" '
    NR == 1 { next }
    {
        n_all++
        if (n_all == 1) { rss_start = $2; fd_start = $3 }
        rss_end = $2; fd_end = $3
        if ($2 > rss_max) rss_max = $2
        if ($3 > fd_max) fd_max = $3
        if (fd_min == "" || $3 < fd_min) fd_min = $3
        if ($1 >= warmup) { n++; t[n] = $1; rss[n] = $2; fd[n] = $3; anon[n] = $5 }
    }
    END {
        printf "samples: %d (%d after the %d s warm-up)\n", n_all, n, warmup
        printf "RSS: start %.1f MiB, end %.1f MiB, max %.1f MiB\n", rss_start / 1024, rss_end / 1024, rss_max / 1024
        printf "fds: start %d, end %d, min %d, max %d\n", fd_start, fd_end, fd_min, fd_max
        if (n < 8) { print "too few samples after the warm-up to judge: run longer"; exit 1 }
        q = int(n / 4)
        for (i = 1; i <= q; i++) { r1 += rss[i]; f1 += fd[i]; a1 += anon[i] }
        for (i = n - q + 1; i <= n; i++) { r4 += rss[i]; f4 += fd[i]; a4 += anon[i] }
        r1 /= q; r4 /= q; f1 /= q; f4 /= q; a1 /= q; a4 /= q
        # Least-squares slope of RSS after the warm-up, in KiB per minute.
        for (i = 1; i <= n; i++) { sx += t[i]; sy += rss[i]; sxx += t[i] * t[i]; sxy += t[i] * rss[i] }
        slope = (n * sxx - sx * sx) > 0 ? (n * sxy - sx * sy) / (n * sxx - sx * sx) * 60 : 0
        rss_drift = (r4 - r1) / r1 * 100
        fd_drift = f4 - f1
        printf "RSS mean: first quarter %.1f MiB, last quarter %.1f MiB (%+.2f %%, tolerance %s %%)\n", r1 / 1024, r4 / 1024, rss_drift, rss_tol
        printf "fd mean: first quarter %.2f, last quarter %.2f (%+.2f, tolerance %s)\n", f1, f4, fd_drift, fd_tol
        if (a1 > 0) printf "anonymous RSS (RssAnon, where a leak shows) mean: first quarter %.0f KiB, last quarter %.0f KiB (%+.0f KiB); file-backed RSS is library pages\n", a1, a4, a4 - a1
        printf "RSS trend after the warm-up: %+.1f KiB/min\n", slope
        ok = 1
        if (rss_drift > rss_tol) { print "RSS: GROWING"; ok = 0 } else { print "RSS: flat" }
        if (fd_drift > fd_tol) { print "fds: GROWING"; ok = 0 } else { print "fds: flat" }
        exit ok ? 0 : 1
    }' "$csv" || flat_status=1

if [[ $chaos_status -ne 0 ]]; then echo "soak: FAIL: the chaos run reported a broken invariant (exit $chaos_status)"; fi
if [[ $flat_status -ne 0 ]]; then echo "soak: FAIL: memory or descriptors did not stay flat"; fi
if [[ $chaos_status -eq 0 && $flat_status -eq 0 ]]; then echo "soak: PASS"; fi
echo "soak: samples in $csv, chaos report in $report, log in $log"
[[ $chaos_status -eq 0 && $flat_status -eq 0 ]]
