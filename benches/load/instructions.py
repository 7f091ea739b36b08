#!/usr/bin/env python3
"""The relay's user-space instructions per request, counted by valgrind's callgrind.

A count of instructions does not move with the machine's load, so two builds can be compared on a
noisy machine where CPU seconds cannot (it leaves out the kernel's share: the system calls, which
`relay-cpu-last-run.md` counts apart). For each relay binary given, in turn:

1. starts the mock upstream (`examples/mock_upstream.rs`, plain HTTP/1.1) and the relay under
   `valgrind --tool=callgrind --instr-atstart=no`, with the embedded store and one
   `claude-console` account on the mock (`loadtest.py`'s config);
2. warms up (both modes), switches the counting on (`callgrind_control -i on`), sends a few more
   requests, zeroes the counters, then sends `--requests` requests one after the other on one
   keep-alive connection, non-streamed or streamed, waits for the request log's writer to
   append them, and dumps the counters;
3. prints the instructions per request and, with `--top N`, the functions of the relay with the
   largest inclusive counts.

  python3 benches/load/instructions.py --relay-bin A [--relay-bin B ...] --mock-bin M \\
      [--requests 1000] [--rounds 1] [--top 25] [--keep]

Every request is checked (200, and a stream that ends with `message_stop`). Python 3 standard
library, valgrind (callgrind_control, callgrind_annotate) only; under valgrind the relay runs
many times slower; 1,000 requests take about fifteen seconds per binary and mode here.
"""

import argparse
import http.client as httpclient
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from loadtest import API_KEY, Proc, free_port, http, relay_config, request_body, start_mock, wait_for  # noqa: E402

HEADERS = {"content-type": "application/json", "x-api-key": API_KEY, "anthropic-version": "2023-06-01"}


def send(port, n, stream):
    """`n` requests on one keep-alive connection; fails on any answer but a complete 200."""
    body = request_body(stream)
    c = httpclient.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        c.request("POST", "/v1/messages", body, HEADERS)
        r = c.getresponse()
        data = r.read()
        if r.status != 200 or (stream and b"message_stop" not in data):
            sys.exit(f"instructions: the relay answered {r.status}: {data[:300]!r}")
    c.close()


def control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def annotate(path, inclusive):
    args = ["callgrind_annotate"] + (["--inclusive=yes"] if inclusive else []) + [path]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def total(text):
    m = re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", text, re.M)
    if not m:
        sys.exit("instructions: no total in callgrind's output")
    return int(m.group(1).replace(",", ""))


def ours(text, n, requests):
    """The relay's own functions (its source tree) with the largest inclusive counts."""
    rows, seen = [], set()
    for line in text.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\([\s\d.]+%\)\s+(\S+?):(\S.*?)\s+\[", line)
        path = m.group(2) if m else ""
        if not path.endswith(".rs") or "/.cargo/" in path or path.startswith("/rustc/"):
            continue
        name = m.group(3)
        if name in seen:
            continue
        seen.add(name)
        rows.append((int(m.group(1).replace(",", "")) // requests, name))
        if len(rows) >= n:
            break
    return rows


def measure(relay_bin, mock_bin, stream, requests, top, tmp):
    mock_port, relay_port, admin_port = free_port(), free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    data = tempfile.mkdtemp(prefix="data-", dir=tmp)
    conf = os.path.join(tmp, f"relay-{relay_port}.yaml")
    with open(conf, "w") as f:
        f.write(relay_config(relay_port, admin_port, data, 2, [("mock", mock_url)]))
    out = os.path.join(tmp, f"callgrind-{relay_port}.out")
    procs = []
    try:
        start_mock(procs, mock_bin, mock_port, 1, os.path.join(tmp, f"mock-{mock_port}.log"))
        env = dict(os.environ, RELAY_LOG="warn")
        relay = Proc(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                      relay_bin, "--config", conf], os.path.join(tmp, f"relay-{relay_port}.log"), env=env)
        procs.append(relay)
        url = f"http://127.0.0.1:{relay_port}"
        wait_for(lambda: http("GET", url + "/health", timeout=5)[0] == 200, "relay under valgrind", timeout=180,
                 proc=relay.p, log=relay.log)
        send(relay_port, 200, False)
        send(relay_port, 50, True)
        control(relay.pid, "-i", "on")
        send(relay_port, 100, stream)
        control(relay.pid, "-z")
        send(relay_port, requests, stream)
        time.sleep(2.0)  # the request log's writer appends within about a second
        control(relay.pid, "-d")
        dumps = sorted((p for p in os.listdir(tmp) if p.startswith(os.path.basename(out) + ".")),
                       key=lambda p: os.path.getmtime(os.path.join(tmp, p)))
        if not dumps:
            sys.exit("instructions: callgrind wrote no dump")
        path = os.path.join(tmp, dumps[-1])
        n = total(annotate(path, False)) // requests
        rows = ours(annotate(path, True), top, requests) if top else []
        return n, rows
    finally:
        for p in reversed(procs):
            p.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay-bin", action="append", required=True, help="a relay binary; give two to compare")
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1, help="measure every binary this many times, interleaved")
    ap.add_argument("--top", type=int, default=0, help="also list this many of the relay's functions")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (callgrind's dumps, logs)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            sys.exit(f"instructions: {tool} is missing (Debian's valgrind package)")
    tmp = tempfile.mkdtemp(prefix="relay-instructions-")
    try:
        results = {}
        for _ in range(args.rounds):
            for stream in (False, True):
                for b in args.relay_bin:
                    n, rows = measure(b, args.mock_bin, stream, args.requests, args.top, tmp)
                    results.setdefault((b, stream), []).append(n)
                    mode = "streamed" if stream else "non-streamed"
                    print(f"{b} {mode}: {n:,} instructions per request", flush=True)
                    for per, name in rows:
                        print(f"    {per:>9,}  {name}")
        print("\n| relay | non-streamed | streamed |\n|---|---:|---:|")
        for b in args.relay_bin:
            cells = [" / ".join(f"{n:,}" for n in results[(b, s)]) for s in (False, True)]
            print(f"| `{b}` | {cells[0]} | {cells[1]} |")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
