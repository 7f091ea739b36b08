#!/usr/bin/env python3
"""The request log's cost on the request path: relay CPU per request with `request_log.enabled: true`
against `false`, in one interleaved run (Python 3 standard library only; helpers from loadtest.py).
`--compare access_log` measures the access lines instead: both relays at `RELAY_LOG=info` with
`log: { format: json, file: ... }`, one with `access: true`, the other `access: false`.

One mock upstream and two relays from the same binary, identical but for that setting; wrk runs
against each in turn (A B B A per round, so drift in the machine's load falls on both alike), and
each row's CPU (user+sys ticks of the relay process, /proc/PID/stat) is divided by the requests wrk
completed. The CPU is also split by thread: the `relay-store` threads (the store's runtime, where the
log's writer and the statistics flush run) and all the others (the request path). Prints a Markdown
table and the medians.

    cargo build --release --bin claude-relay --example mock_upstream
    python3 benches/load/request_log_ab.py --relay-bin $T/release/claude-relay \\
        --mock-bin $T/release/examples/mock_upstream [--rounds 4 --duration 5 --concurrency 50]
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadtest as lt  # noqa: E402


def store_ticks(pid, prefix="relay-store"):
    """CPU ticks of the process's threads named `prefix`... (/proc/PID/task/*/stat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
            if not name.startswith(prefix):
                continue
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay-bin", required=True)
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--relay-threads", type=int, default=2)
    ap.add_argument("--compare", choices=("request_log", "access_log"), default="request_log")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="reqlog-ab-")
    procs = []
    try:
        mock_port = lt.free_port()
        lt.start_mock(procs, args.mock_bin, mock_port, 1, os.path.join(tmp, "mock.log"))
        mock_url = f"http://127.0.0.1:{mock_port}"
        relays = {}
        if args.compare == "access_log":
            os.environ["RELAY_LOG"] = "info"
            variants = [(n, f"log: {{ format: json, file: {tmp}/access-{n}.log, access: {'true' if n == 'on' else 'false'} }}\n")
                        for n in ("on", "off")]
        else:
            variants = [("on", ""), ("off", "request_log: { enabled: false }\n")]
        for name, extra in variants:
            port, admin = lt.free_port(), lt.free_port()
            data = os.path.join(tmp, f"data-{name}")
            conf = os.path.join(tmp, f"relay-{name}.yaml")
            with open(conf, "w") as f:
                f.write(lt.relay_config(port, admin, data, args.relay_threads, [("main", mock_url)]) + extra)
            url = f"http://127.0.0.1:{port}"
            relay = lt.start_relay(procs, args.relay_bin, conf, url, f"http://127.0.0.1:{admin}",
                                   os.path.join(tmp, f"relay-{name}.log"))
            relays[name] = (relay, url + "/v1/messages")
        # Warm both (connection pools, allocator).
        for name in relays:
            for stream in (False, True):
                lt.run_wrk(relays[name][1], args.concurrency, 1, stream)

        # The threads whose CPU is shown apart: the store's (the request log's writer) or the log's.
        side = "relay-log" if args.compare == "access_log" else "relay-store"
        rows = []
        per = {(n, s): [] for n in relays for s in (False, True)}
        split = {(n, s): [] for n in relays for s in (False, True)}
        for rnd in range(args.rounds):
            order = ("on", "off", "off", "on") if rnd % 2 == 0 else ("off", "on", "on", "off")
            for stream in (False, True):
                for name in order:
                    relay, url = relays[name]
                    before, store_before = lt.cpu_ticks(relay.pid), store_ticks(relay.pid, side)
                    r = lt.run_wrk(url, args.concurrency, args.duration, stream)
                    ticks = lt.cpu_ticks(relay.pid) - before
                    store = store_ticks(relay.pid, side) - store_before
                    n = r["requests"]
                    us = ticks / lt.CLK_TCK * 1e6 / max(n, 1)
                    store_us = store / lt.CLK_TCK * 1e6 / max(n, 1)
                    split[(name, stream)].append((us - store_us, store_us))
                    errors, _ = lt.errors_of(r)
                    per[(name, stream)].append(us)
                    rows.append((rnd + 1, name, stream, n / (r["duration_us"] / 1e6), us, errors))
        print(f"| round | {args.compare} | stream | req/s | CPU µs/req | errors |")
        print("|---:|---|---|---:|---:|---:|")
        for rnd, name, stream, rps, us, errors in rows:
            print(f"| {rnd} | {name} | {'yes' if stream else 'no'} | {rps:,.0f} | {us:.1f} | {errors} |")
        print()
        for stream in (False, True):
            on = statistics.median(per[("on", stream)])
            off = statistics.median(per[("off", stream)])
            print(f"stream={'yes' if stream else 'no'}: median CPU µs/req enabled {on:.1f}, disabled {off:.1f}, "
                  f"difference {on - off:+.1f}")
            for part, i in (("request-path threads", 0), (f"{side} threads", 1)):
                a = statistics.median(x[i] for x in split[("on", stream)])
                b = statistics.median(x[i] for x in split[("off", stream)])
                print(f"    {part}: enabled {a:.1f}, disabled {b:.1f}, difference {a - b:+.1f}")
        print()
        print(f"logs and configs: {tmp}")
    finally:
        for p in reversed(procs):
            p.stop()


if __name__ == "__main__":
    main()
