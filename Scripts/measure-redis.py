#!/usr/bin/env python3
"""The README's Redis table, measured side by side in one run (issue 14's method).

One redis-server on loopback; for each of three interleaved rounds:
  redis-bench --url ... --workload ping,get --concurrency 1,8,50 --mode both --no-compare
      (async workers as plain tasks: --async-executor global)
  redis-bench ... --mode async --async-executor reactor (tasks that prefer the I/O reactor)
  redis-bench ... --concurrency 200,1000 --pool-size 50 (waiters), both executors
  redis-bench ... --pipeline 16 --concurrency 50
  redis-benchmark -c C -n N -t ping_mbulk,get -d 3 (and -P 16 -n 16N at -c 50: the same commands)
then the best of the three rounds for every figure, ops/s and client CPU per request (ours from
redis-bench's JSON `client_cpu_us_per_op`; redis-benchmark's from wait4, measured the same way).

Usage: Scripts/measure-redis.py [--requests N] [--rounds R] [--force] [--out FILE.md]
Refuses to start while the load average is 1 or more (a shared machine) unless --force.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, ".build", "release", "redis-bench")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_timed(argv):
    """Runs argv, returns (stdout, cpu seconds of the child: user + system)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({status}): {' '.join(argv)}\n{out[-2000:]}")
    return out, usage.ru_utime + usage.ru_stime


def redis_bench(url, requests, extra, json_path):
    argv = [BENCH, "--url", url, "--requests", str(requests), "--value-size", "3", "--no-compare",
            "--json", json_path] + extra
    run_timed(argv)
    with open(json_path) as f:
        return json.load(f)


def redis_benchmark(port, clients, requests, pipeline=1):
    """Runs `requests` commands per test (`-n`), in pipelines of `pipeline`; CPU per pipeline."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-n", str(requests),
            "-t", "ping_mbulk,get", "-d", "3", "--csv"]
    if pipeline > 1:
        argv += ["-P", str(pipeline)]
    out, cpu = run_timed(argv)
    rows = {}
    for line in out.splitlines():
        parts = [p.strip('"') for p in line.split(",")]
        if len(parts) >= 2 and parts[0] in ("PING_MBULK", "GET"):
            name = "ping" if parts[0] == "PING_MBULK" else "get"
            rows[name] = float(parts[1])
    # Its whole process' CPU over both tests: each ran `requests` requests.
    cpu_per_op = cpu * 1e6 / (2 * requests / pipeline)
    return rows, cpu_per_op


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    load = os.getloadavg()[0]
    print(f"load average before the run: {load:.2f}")
    if load >= 1 and not args.force:
        sys.exit("the machine is busy (load average >= 1): wait, or pass --force and say so")
    subprocess.run(["swift", "build", "-c", "release", "--product", "redis-bench"], cwd=ROOT, check=True)

    port = free_port()
    directory = tempfile.mkdtemp(prefix="connpool-measure-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}"
        best = {}  # key -> (ops, cpu)

        def keep(key, ops, cpu):
            if key not in best or ops > best[key][0]:
                best[key] = (ops, cpu)

        n = args.requests
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}")
            with tempfile.TemporaryDirectory() as tmp:
                j = os.path.join(tmp, "r.json")
                runs = [
                    (["--workload", "ping,get", "--concurrency", "1,8,50", "--mode", "both"], "global"),
                    (["--workload", "ping,get", "--concurrency", "1,8,50", "--mode", "async", "--async-executor", "reactor"], "reactor"),
                    (["--workload", "ping,get", "--concurrency", "200,1000", "--pool-size", "50", "--mode", "async"], "global"),
                    (["--workload", "ping,get", "--concurrency", "200,1000", "--pool-size", "50", "--mode", "async", "--async-executor", "reactor"], "reactor"),
                    (["--workload", "ping,get", "--concurrency", "50", "--pipeline", "16", "--mode", "both"], "global"),
                    (["--workload", "ping,get", "--concurrency", "50", "--pipeline", "16", "--mode", "async", "--async-executor", "reactor"], "reactor"),
                ]
                for extra, executor in runs:
                    for result in redis_bench(url, n, extra, j):
                        mode = result["mode"] + ("/reactor" if executor == "reactor" and result["mode"] == "async" else "")
                        key = ("ours", result["workload"], result["concurrency"], mode, result["commands_per_request"])
                        keep(key, result["ops_per_sec"], result.get("client_cpu_us_per_op"))
                for clients in (1, 8, 50):
                    rows, cpu = redis_benchmark(port, clients, n)
                    for workload, ops in rows.items():
                        keep(("redis-benchmark", workload, clients, "c", 1), ops, cpu)
                # The same work as redis-bench's `--requests n --pipeline 16`: n requests of 16 commands.
                # (Until 2026-12-06 this ran n commands, a 16th of ours: a 0.1 s run whose figure swung
                # between 0.7 and 1.2 M/s.)
                rows, cpu = redis_benchmark(port, 50, n * 16, pipeline=16)
                for workload, ops in rows.items():
                    keep(("redis-benchmark", workload, 50, "c", 16), ops, cpu)

        def cell(key):
            if key not in best:
                return "—"
            ops, cpu = best[key]
            return f"{ops:,.0f} ({cpu:.2f})" if cpu is not None else f"{ops:,.0f}"

        def ratio(a, b):
            if a not in best or b not in best:
                return "—"
            return f"{best[a][0] / best[b][0]:.2f}×"

        lines = [
            f"load average before the run: {load:.2f}; {args.rounds} interleaved rounds, best of them; "
            f"{n:,} requests per run, 3-byte values; ops/s with client CPU µs per request in brackets",
            "",
            "| workload | conc | pooled async (reactor) | pooled async (tasks) | pooled blocking | redis-benchmark | reactor ÷ redis-benchmark | tasks ÷ redis-benchmark |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for workload in ("ping", "get"):
            for conc in (1, 8, 50, 200, 1000):
                rb = ("redis-benchmark", workload, min(conc, 50), "c", 1)
                reactor = ("ours", workload, conc, "async/reactor", 1)
                tasks = ("ours", workload, conc, "async", 1)
                blocking = ("ours", workload, conc, "sync", 1)
                lines.append(f"| {workload} | {conc}{' (pool 50)' if conc > 50 else ''} | {cell(reactor)} | {cell(tasks)} | "
                             f"{cell(blocking)} | {cell(rb)}{' (-c 50)' if conc > 50 else ''} | {ratio(reactor, rb)} | {ratio(tasks, rb)} |")
            rb = ("redis-benchmark", workload, 50, "c", 16)
            reactor = ("ours", workload, 50, "async/reactor", 16)
            tasks = ("ours", workload, 50, "async", 16)
            blocking = ("ours", workload, 50, "sync", 16)
            lines.append(f"| {workload} -P 16 | 50 | {cell(reactor)} | {cell(tasks)} | {cell(blocking)} | {cell(rb)} | "
                         f"{ratio(reactor, rb)} | {ratio(tasks, rb)} |")
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
