#!/usr/bin/env python3
"""What each request-path Lua script costs Redis, replayed alone on an idle private Redis.

Loads the admission (`src/limits/lua/admit.lua`), the settlement (`settle.lua`) and the session
binding with the account lease (`src/store/lua/sticky_lease.lua`) into a private redis-server,
then runs each with `redis-benchmark` (pipelined, 10 holders in turn, or --holders: that many
requests of the key in flight; as a key with every limit and a sticky session sends them) and prints the Redis CPU (`INFO cpu`, user + system) and the
time inside the script (`INFO commandstats`) per call. With `--rev <git revision>` the scripts of
that revision are measured too, in the same run, one after the other, so the two can be compared
on the same machine at the same moment.

  python3 benches/load/script_cost.py [--rev HEAD~1] [--calls 200000] [--rounds 3]

Python 3 standard library, redis-server and redis-benchmark (Debian's redis-tools) only.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "soak"))
from redis_calls import redis_counts  # noqa: E402
from soak import Redis, start_redis  # noqa: E402

SCRIPTS = {
    "admit": "src/limits/lua/admit.lua",
    "settle": "src/limits/lua/settle.lua",
    "sticky_lease": "src/store/lua/sticky_lease.lua",
}
HOLDER = "h__rand_int__"
ESTIMATE = "1000000"
# A key with every limit: a fixed window of requests, tokens and cost, daily, weekly and total
# caps, a concurrency limit of 1000, leases of 60 s, no recorded spend to seed, a reservation.
CAP = "1000000000000000"


def admit_argv(src):
    if "ARGV[25]" not in src:  # the layout before the month's bounds came from the caller
        return [HOLDER, "3600000", "100000000", "100000000000", CAP, "1", CAP, CAP, CAP, "0", "0", "1000",
                "60000", "0", "0", "0", "0", "0", "0", "-1", "0", "0", ESTIMATE, "0"]
    now = datetime.datetime.now(datetime.timezone.utc)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    after = (month + datetime.timedelta(days=32)).replace(day=1)
    return [HOLDER, "3600000", "100000000", "100000000000", CAP, "1", CAP, CAP, CAP, "-1", "0", "0", "1000",
            "60000", ESTIMATE, "0", str(int(month.timestamp())), str(int(after.timestamp()))]


def source(rev, path):
    if rev is None:
        with open(os.path.join(ROOT, path)) as f:
            return f.read()
    return subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def calls(src, name, tag):
    """(keys, argv) of one call of script `name`, for its layout in `src` (KEYS counted there)."""
    k = lambda kind: f"b{tag}:limit:{kind}:key"  # noqa: E731
    if name == "admit":
        if "KEYS[5]" in src:  # slots and reservations in two sets
            keys = [k("rate"), k("spend"), k("slots"), k("reserved"), k("rolling")]
        else:
            keys = [k("rate"), k("spend"), k("inflight"), k("rolling")]
        return keys, admit_argv(src)
    if name == "settle":
        member = f"{ESTIMATE}:{HOLDER}"
        if "KEYS[5]" in src:
            keys = [k("rate"), k("spend"), k("reserved"), k("rolling"), k("slots")]
            argv = ["100", "5000", "1", "3600000", "1", member, HOLDER, HOLDER]
        else:
            keys = [k("rate"), k("spend"), k("inflight"), k("rolling")]
            argv = ["100", "5000", "1", "3600000", "1", member, HOLDER]
        return keys, argv
    keys = [f"b{tag}:session:s", f"b{tag}:lease:account:a"]
    return keys, ["3600000", "acct", HOLDER, "1000", "60000"]


def stats(url):
    """Redis CPU (s) so far, and µs spent inside EVALSHA calls."""
    _, usec, cpu = redis_counts(url)
    return cpu, usec.get("evalsha", 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rev", help="also measure the scripts of this git revision")
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pipeline", type=int, default=20)
    ap.add_argument("--holders", type=int, default=10,
                    help="requests of the key in flight (holders taken in turn)")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    args = ap.parse_args()
    bench = shutil.which("redis-benchmark")
    if not bench:
        sys.exit("script_cost: redis-benchmark not found (Debian package redis-tools)")
    versions = [("working tree", None)] + ([(args.rev, args.rev)] if args.rev else [])
    tmp = tempfile.mkdtemp(prefix="script-cost-")
    procs = []
    try:
        _, url = start_redis(procs, tmp, args.redis_server)
        port = url.rsplit(":", 1)[1].split("/")[0]
        r = Redis(url)
        results = {}
        for rnd in range(args.rounds):
            for vi, (label, rev) in enumerate(versions):
                for name, path in SCRIPTS.items():
                    src = source(rev, path)
                    sha = r.cmd("SCRIPT", "LOAD", src)
                    sha = sha.decode() if isinstance(sha, bytes) else sha
                    keys, argv = calls(src, name, vi)
                    if name == "sticky_lease":
                        r.cmd("SET", keys[0], "acct")
                    cpu0, us0 = stats(url)
                    subprocess.run([bench, "-p", port, "-n", str(args.calls), "-P", str(args.pipeline), "-c", "1",
                                    "-r", str(args.holders), "-q", "EVALSHA", sha, str(len(keys)), *keys, *argv],
                                   check=True, capture_output=True)
                    cpu1, us1 = stats(url)
                    results.setdefault((label, name), []).append(
                        ((cpu1 - cpu0) * 1e6 / args.calls, (us1 - us0) / args.calls))
        print(f"## Lua scripts on an idle Redis: µs per call ({args.calls:,} calls, pipeline {args.pipeline}, "
              f"{args.holders} holders, {args.rounds} rounds)\n")
        print("| scripts | script | Redis CPU µs/call, best | median | inside the script µs/call, best |")
        print("|---|---|---:|---:|---:|")
        for (label, name), runs in results.items():
            cpus = sorted(c for c, _ in runs)
            inside = min(u for _, u in runs)
            print(f"| {label} | {name} | {cpus[0]:.2f} | {cpus[len(cpus) // 2]:.2f} | {inside:.2f} |")
        r.close()
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
