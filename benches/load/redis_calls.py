#!/usr/bin/env python3
"""What one request costs Redis: commands, scripts and Redis CPU per request, under load.

Starts a private redis-server, the mock upstream (examples/mock_upstream.rs) and the release relay
on that Redis, with one client key that has every limit (a rate window of requests, tokens and
cost, daily/weekly/total spend caps, a concurrency limit) and one account with a concurrency cap
(`max_concurrency`), then runs wrk (one fixed Messages request with a sticky session, half
streamed) for --duration seconds at --concurrency connections. Reads `INFO commandstats` and
`INFO cpu` of the private Redis before and after, and the relay's CPU time from /proc; prints per
request: Redis CPU (µs), commands (all, and by name, scripts' inner commands included), script
calls, and the relay's CPU (µs). The usage-statistics flushes and the request log are part of
the count (amortised over the requests of the run).

  python3 benches/load/redis_calls.py --relay-bin target/release/claude-relay \\
      --mock-bin target/release/examples/mock_upstream [--duration 5] [--concurrency 10]

Python 3 standard library only; wrk from Debian (benches/load/run.sh installs it).
"""

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "soak"))
from loadtest import (SECRET, Proc, cpu_ticks, free_port, http, run_wrk, start_mock,  # noqa: E402
                      start_relay, CLK_TCK)
from soak import Redis, start_redis  # noqa: E402

KEY = "cr_" + "3d" * 32


def config(relay_port, admin_port, data, mock_url, redis_url):
    return f"""listen: 127.0.0.1:{relay_port}
admin: {{ listen: 127.0.0.1:{admin_port}, username: admin, password: load-test-admin-password }}
secret_key: {SECRET}
threads: 2
data_dir: {data}
store: {{ backend: redis, url: "{redis_url}", prefix: "rc:" }}
shutdown_grace: 2s
connections: {{ per_ip: 0 }}
api_keys:
  - name: limited
    key: {KEY}
    rate_limit: {{ window_minutes: 60, requests: 100000000, tokens: 100000000000, cost_usd: 1000000 }}
    cost_limits: {{ daily_usd: 1000000, weekly_usd: 1000000, total_usd: 1000000 }}
    concurrency: {{ limit: 1000 }}
accounts:
  - {{ name: main, kind: claude-console, base_url: "{mock_url}", api_key: sk-ant-api03-load-test, max_concurrency: 1000 }}
"""


def redis_counts(url):
    r = Redis(url)
    try:
        stats = r.cmd("INFO", "commandstats")
        cpu = r.cmd("INFO", "cpu")
        net = r.cmd("INFO", "stats")
    finally:
        r.close()
    text = lambda v: v.decode() if isinstance(v, bytes) else v  # noqa: E731
    calls, usec = {}, {}
    for line in text(stats).splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            calls[name] = int(fields["calls"])
            usec[name] = int(fields["usec"])
    # Redis's CPU seconds (`user`, `sys`) and its socket reads and writes so far (`reads`, `writes`).
    server = {}
    for line in text(cpu).splitlines():
        if line.startswith(("used_cpu_sys:", "used_cpu_user:")):
            k, v = line.split(":")
            server[k[len("used_cpu_"):]] = float(v)
    for line in text(net).splitlines():
        if line.startswith(("total_reads_processed:", "total_writes_processed:")):
            k, v = line.split(":")
            server[k.split("_")[1]] = float(v)
    return calls, usec, server


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--relay-bin", required=True)
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="redis-calls-")
    procs = []
    try:
        _, redis_url = start_redis(procs, tmp, args.redis_server)
        mock_port = free_port()
        start_mock(procs, args.mock_bin, mock_port, 1, os.path.join(tmp, "mock.log"))
        relay_port, admin_port = free_port(), free_port()
        conf = os.path.join(tmp, "relay.yaml")
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        with open(conf, "w") as f:
            f.write(config(relay_port, admin_port, data, f"http://127.0.0.1:{mock_port}", redis_url))
        relay_url = f"http://127.0.0.1:{relay_port}"
        relay = start_relay(procs, args.relay_bin, conf, relay_url, f"http://127.0.0.1:{admin_port}",
                            os.path.join(tmp, "relay.log"))
        # Warm-up: scripts loaded, the key's recorded spend read, the session bound.
        for stream in (False, True):
            run_wrk(relay_url + "/v1/messages", 2, 1, stream, api_key=KEY, session="bench-session")
        time.sleep(1.5)
        rows = []
        for stream in (False, True):
            before, usec_before, server_before = redis_counts(redis_url)
            ticks = cpu_ticks(relay.pid)
            r = run_wrk(relay_url + "/v1/messages", args.concurrency, args.duration, stream, api_key=KEY,
                        session="bench-session")
            # The statistics flush of the run's last second lands too.
            time.sleep(1.5)
            after, usec_after, server_after = redis_counts(redis_url)
            relay_s = (cpu_ticks(relay.pid) - ticks) / CLK_TCK
            n = r["requests"]
            if n == 0 or r["status"]:
                sys.exit(f"redis_calls: {n} requests, {r['status']} not 2xx")
            diff = collections.Counter({k: after.get(k, 0) - before.get(k, 0) for k in after})
            diff = collections.Counter({k: v for k, v in diff.items() if v > 0 and k not in ("info",)})
            usec = {k: usec_after.get(k, 0) - usec_before.get(k, 0) for k in diff}
            delta = {k: server_after[k] - server_before[k] for k in server_after}
            rows.append((stream, n, r, (delta["user"] + delta["sys"]) * 1e6 / n, diff, relay_s * 1e6 / n, usec,
                         delta))
        label = f" ({args.label})" if args.label else ""
        print(f"## Redis per request{label}: key with every limit, sticky session, account cap; "
              f"c={args.concurrency}, {args.duration} s\n")
        print("| | requests | req/s | p50 ms | Redis CPU µs/req | commands/req | scripts/req | relay CPU µs/req |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for stream, n, r, rcpu, diff, relay_us, _, _ in rows:
            total = sum(diff.values()) / n
            scripts = (diff.get("evalsha", 0) + diff.get("eval", 0)) / n
            print(f"| {'stream' if stream else 'non-stream'} | {n:,} | {n / (r['duration_us'] / 1e6):,.0f} | "
                  f"{r['p50_us'] / 1000:.2f} | {rcpu:.1f} | {total:.2f} | {scripts:.2f} | {relay_us:.1f} |")
        print()
        for stream, n, _, _, diff, _, usec, _ in rows:
            top = ", ".join(f"{k} {v / n:.2f}" for k, v in diff.most_common())
            print(f"- {'stream' if stream else 'non-stream'} commands per request: {top}")
        print()
        print("Time inside commands (`INFO commandstats` usec; a script's includes the commands it calls, "
              "which are also counted under their own names), µs per request:")
        print()
        for stream, n, _, _, diff, _, usec, _ in rows:
            top = ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(usec.items(), key=lambda kv: -kv[1]) if v)
            print(f"- {'stream' if stream else 'non-stream'}: {top}")
        print()
        print("Redis CPU in user space and in the kernel, and its socket reads and writes (`INFO stats` "
              "`total_reads_processed`, `total_writes_processed`), per request:")
        print()
        for stream, n, _, _, _, _, _, d in rows:
            print(f"- {'stream' if stream else 'non-stream'}: user {d['user'] * 1e6 / n:.1f} µs, "
                  f"system {d['sys'] * 1e6 / n:.1f} µs, reads {d['reads'] / n:.2f}, writes {d['writes'] / n:.2f}")
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
