#!/usr/bin/env python3
"""Soak test of claude-relay: one release relay on Redis under mixed traffic for a long time
(Python 3 standard library only; see README.md beside this).

  1. starts a private redis-server (unless --redis-url), two normal mocks and one mock answering
     429 to everything (examples/mock_upstream.rs), and the relay over three claude-console
     accounts of the same priority with three client keys (plain, rate-limited,
     concurrency-limited),
  2. runs mixed traffic from a few threads for --minutes (keep-alive http.client): Messages
     requests streamed and not, slow streams, streams the client cuts, requests over the keys'
     limits, admin reads,
  3. every --sample-every seconds samples the relay's RSS, CPU time, open descriptors, requests in
     flight, the client's outcomes so far and relay_failovers_total,
  4. stops the traffic, waits for the usage flush and compares the usage the relay stored (admin
     API and Redis directly) with what the client was served, and the relay's and the mocks'
     counters with the client's,
  5. prints a Markdown report, writes it to --out, and exits 1 when the RSS grew past
     --rss-growth-limit times the RSS after the warm-up or when a usage check failed.

Everything listens on 127.0.0.1 only.
"""

import argparse
import collections
import datetime
import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
# The load test's process and /proc helpers and its request body.
sys.path.insert(0, os.path.join(HERE, "..", "load"))
from loadtest import Proc, cpu_ticks, free_port, request_body, status_kb  # noqa: E402
SECRET = "5eed" * 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
ADMIN_USER = "admin"
ADMIN_PASSWORD = "soak-test-admin-password"
# The client keys, by name (their ids in the store are `config.<name>`).
KEYS = {
    "plain": "cr_" + "3d" * 32,
    "rate": "cr_" + "4e" * 32,
    "conc": "cr_" + "5f" * 32,
}
ACCOUNTS = ("ok-a", "ok-b", "limited")
# Token fields of the stored usage (src/store/mod.rs UsageCounters) that the client can count.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens",
                "cache_write_1h_tokens")
# Delay between the ~13 chunks of a slow stream (x-mock-chunk-delay-ms).
SLOW_DELAY_MS = 50


class SetupError(Exception):
    pass


def die(msg):
    raise SetupError(msg)


# ---------------------------------------------------------------------------------------------
# Processes and /proc


def tail_of(path, n=30):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def wait_for(pred, what, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.p.poll() is not None:
            break
        try:
            if pred():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    die(f"{what} did not become ready" + (f"\n{tail_of(proc.log)}" if proc is not None else ""))


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# HTTP helpers (setup, admin, metrics)


def call(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


METRIC_RE = re.compile(r'^(\w+)(?:\{([^}]*)\})?\s+([0-9.eE+-]+|NaN)$')


def read_metrics(admin_url):
    """Admin /metrics as [(name, {label: value}, value)], or None when unavailable."""
    try:
        code, body, _ = call("GET", admin_url + "/metrics", timeout=5)
    except OSError:
        return None
    if code != 200:
        return None
    out = []
    for line in body.decode(errors="replace").splitlines():
        m = METRIC_RE.match(line.strip())
        if m:
            out.append((m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")), float(m.group(3))))
    return out


def metric_by(metrics, name, label, **where):
    """Counter `name` summed by one label, over the series whose labels match `where`. A counter
    never incremented is absent from /metrics: an empty Counter."""
    out = collections.Counter()
    for n, labels, v in metrics or ():
        if n == name and all(labels.get(k) == w for k, w in where.items()):
            out[labels.get(label, "")] += int(v)
    return out


def metric_value(metrics, name):
    for n, _, v in metrics or ():
        if n == name:
            return v
    return None


def mock_requests(url):
    """Requests a mock has answered (its GET /_mock/stats), or None."""
    try:
        code, body, _ = call("GET", url + "/_mock/stats", timeout=5)
        return json.loads(body)["requests"] if code == 200 else None
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------
# Redis: a private server, and a minimal RESP client for reading the stored usage directly


class Redis:
    def __init__(self, url, timeout=10):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("redis", ""):
            die(f"--redis-url: only redis:// URLs are supported here, not {url}")
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout)
        self.f = self.sock.makefile("rb")
        if u.password:
            args = ["AUTH", urllib.parse.unquote(u.username), urllib.parse.unquote(u.password)] if u.username \
                else ["AUTH", urllib.parse.unquote(u.password)]
            self.cmd(*args)
        db = (u.path or "/").strip("/")
        if db:
            self.cmd("SELECT", db)

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.f.readline()
        if not line:
            raise OSError("redis closed the connection")
        t, rest = line[:1], line[1:-2]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise OSError("redis: " + rest.decode(errors="replace"))
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise OSError(f"redis: unexpected reply {line!r}")

    def hgetall(self, key):
        flat = self.cmd("HGETALL", key) or []
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def used_memory(self):
        for line in self.cmd("INFO", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":", 1)[1])
        return None

    def delete_prefix(self, prefix):
        cursor, n = "0", 0
        while True:
            cursor, keys = self.cmd("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
            if keys:
                n += self.cmd("DEL", *keys)
            if cursor == "0":
                return n

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def redis_try(url, fn, default=None):
    """fn(Redis) on a fresh connection; `default` when Redis cannot be reached."""
    try:
        r = Redis(url, timeout=5)
    except (OSError, SetupError):
        return default
    try:
        return fn(r)
    except OSError:
        return default
    finally:
        r.close()


def start_redis(procs, tmp, server_bin):
    port = free_port()
    rdir = os.path.join(tmp, "redis")
    os.makedirs(rdir)
    p = Proc([server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", rdir, "--daemonize", "no", "--protected-mode", "yes"],
             os.path.join(tmp, "redis.log"))
    procs.append(p)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: redis_try(url, lambda r: r.cmd("PING")) == "PONG", f"redis-server on port {port}", proc=p)
    return p, url


# ---------------------------------------------------------------------------------------------
# The relay and the mocks


def relay_config(relay_port, admin_port, data, threads, mocks, redis_url, prefix, rate_limit):
    accounts = "".join(
        f'  - {{ name: {n}, kind: claude-console, base_url: "{u}", api_key: sk-ant-api03-soak-{n}, priority: 50 }}\n'
        for n, u in mocks.items())
    return f"""listen: 127.0.0.1:{relay_port}
admin: {{ listen: 127.0.0.1:{admin_port}, username: {ADMIN_USER}, password: {ADMIN_PASSWORD} }}
secret_key: {SECRET}
threads: {threads}
data_dir: {data}
store: {{ backend: redis, url: "{redis_url}", prefix: "{prefix}" }}
stats: {{ flush_interval: 1s }}
shutdown_grace: 5s
connections: {{ per_ip: 0 }}
api_keys:
  - {{ name: plain, key: {KEYS['plain']} }}
  - {{ name: rate, key: {KEYS['rate']}, rate_limit: {{ window_minutes: 1, requests: {rate_limit} }} }}
  - {{ name: conc, key: {KEYS['conc']}, concurrency: {{ limit: 2 }} }}
accounts:
{accounts}"""


def start_mock(procs, mock_bin, name, tmp, extra=()):
    port = free_port()
    p = Proc([mock_bin, "--listen", f"127.0.0.1:{port}", "--threads", "1", *extra],
             os.path.join(tmp, f"mock-{name}.log"))
    procs.append(p)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None, f"mock {name}", proc=p)
    return p, f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------------------------
# What the client counts


class Usage:
    """Anthropic usage as the client reads it, by the relay's rule (src/usage/sse.rs): each field
    of message_start, overridden by every later event that carries it; a cache-write total
    without its 5m/1h split keeps the split already known when it agrees with it."""

    def __init__(self):
        self.v = dict.fromkeys(TOKEN_FIELDS, 0)

    def apply(self, u):
        v = self.v
        for src, dst in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                         ("cache_read_input_tokens", "cache_read_tokens")):
            if u.get(src) is not None:
                v[dst] = u[src]
        split = u.get("cache_creation")
        if isinstance(split, dict):
            if split.get("ephemeral_5m_input_tokens") is not None:
                v["cache_write_5m_tokens"] = split["ephemeral_5m_input_tokens"]
            if split.get("ephemeral_1h_input_tokens") is not None:
                v["cache_write_1h_tokens"] = split["ephemeral_1h_input_tokens"]
        elif u.get("cache_creation_input_tokens") is not None:
            total = u["cache_creation_input_tokens"]
            if v["cache_write_5m_tokens"] + v["cache_write_1h_tokens"] != total:
                v["cache_write_1h_tokens"] = min(v["cache_write_1h_tokens"], total)
                v["cache_write_5m_tokens"] = total - v["cache_write_1h_tokens"]


def sse_events(data):
    """(event type, parsed data) of each complete event in `data`."""
    out = []
    for block in data.split(b"\n\n")[:-1]:
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                try:
                    d = json.loads(line[5:].strip())
                except ValueError:
                    d = None
                out.append(((d or {}).get("type"), d))
    return out


def stream_usage(data):
    """(Usage, saw message_stop) of the complete events in `data`."""
    u, stop = Usage(), False
    for t, d in sse_events(data):
        if t == "message_start":
            u.apply(((d.get("message") or {}).get("usage")) or {})
        elif t == "message_delta":
            u.apply(d.get("usage") or {})
        elif t == "message_stop":
            stop = True
    return u, stop


# The kinds of request the workers send.
JSON, STREAM, SLOW, CUT = "json", "stream", "slow stream", "cut stream"
KINDS = (JSON, STREAM, SLOW, CUT)


class Tally:
    """The client's count of what happened, per key; one lock for all threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {k: collections.Counter() for k in KEYS}          # kind -> 200 answers
        self.tokens = {k: collections.Counter() for k in KEYS}      # field -> served tokens
        self.refused = {k: 0 for k in KEYS}                         # 429 from the relay's filters
        self.other = {k: collections.Counter() for k in KEYS}       # status -> other answers
        self.by_status = collections.Counter()                      # every status the client read
        self.client_err = {k: collections.Counter() for k in KEYS}  # no status read: error -> n
        self.broken = {k: collections.Counter() for k in KEYS}      # 200 head, body failed/incomplete
        self.notes = collections.Counter()                          # first lines of odd answers
        self.admin = collections.defaultdict(list)                  # endpoint -> [(status, ms)]
        self.admin_window_max_ms = 0.0

    def served(self, key, kind, usage):
        with self.lock:
            self.ok[key][kind] += 1
            self.by_status["200"] += 1
            for f, n in usage.v.items():
                self.tokens[key][f] += n

    def snapshot(self):
        with self.lock:
            ok = sum(sum(c.values()) for c in self.ok.values())
            refused = sum(self.refused.values())
            other = sum(sum(c.values()) for c in self.other.values())
            err = sum(sum(c.values()) for c in self.client_err.values())
            return ok, refused, other, err


def one_request(conn, key, kind, tally):
    """Sends one Messages request on `conn` and reads it as `kind` asks. Returns whether the
    connection may be reused."""
    headers = {"content-type": "application/json", "x-api-key": KEYS[key], "anthropic-version": "2023-06-01"}
    if kind in (SLOW, CUT):
        headers["x-mock-chunk-delay-ms"] = str(SLOW_DELAY_MS)
    try:
        conn.request("POST", "/v1/messages", body=request_body(kind != JSON), headers=headers)
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException) as e:
        with tally.lock:
            tally.client_err[key][f"{type(e).__name__} (before the status)"] += 1
        return False
    status = resp.status
    try:
        if status != 200:
            body = resp.read()
            source = resp.getheader("x-relay-error-source")
            try:
                etype = json.loads(body)["error"]["type"]
            except (ValueError, KeyError, TypeError):
                etype = None
            with tally.lock:
                tally.by_status[str(status)] += 1
                if status == 429 and source == "relay" and etype == "rate_limit_error":
                    tally.refused[key] += 1
                else:
                    tally.other[key][str(status)] += 1
                    tally.notes[f"{status} source={source} {body[:160]!r}"] += 1
            return not resp.will_close
        if kind == JSON:
            body = resp.read()
            u = Usage()
            u.apply(json.loads(body).get("usage") or {})
            tally.served(key, kind, u)
            return not resp.will_close
        if kind in (STREAM, SLOW):
            body = resp.read()
            u, stop = stream_usage(body)
            tally.served(key, kind, u)
            if not stop:
                with tally.lock:
                    tally.broken[key]["stream without message_stop"] += 1
            return not resp.will_close
        # CUT: read until the first event (message_start, with the prompt's usage) is complete,
        # then close the socket with the rest of the stream unread.
        data = b""
        while not any(t == "message_start" for t, _ in sse_events(data)):
            chunk = resp.read1(65536)
            if not chunk:
                break
            data += chunk
        u, _ = stream_usage(data)
        tally.served(key, kind, u)
        if not any(t == "message_start" for t, _ in sse_events(data)):
            with tally.lock:
                tally.broken[key]["cut stream ended before message_start"] += 1
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        return False
    except (OSError, http.client.HTTPException, ValueError) as e:
        # The relay answered 200 (and counts the request); the body broke on the way.
        with tally.lock:
            tally.by_status["200"] += 1
            tally.ok[key][kind] += 1
            tally.broken[key][f"{type(e).__name__} reading a 200 body"] += 1
        return False


def worker(relay_port, key, kinds, weights, rate, stop, tally, seed):
    """Sends requests on `key`, `rate` a second (0: one after the other), each of a kind drawn
    from `kinds` with `weights`, on one keep-alive connection (a new one after a cut or an
    error)."""
    rng = random.Random(seed)
    interval = 1.0 / rate if rate else 0.0
    next_t = time.monotonic()
    conn = None
    while not stop.is_set():
        if interval:
            next_t += interval
            now = time.monotonic()
            if next_t > now:
                if stop.wait(next_t - now):
                    break
            elif now - next_t > 1.0:
                next_t = now  # fell behind (slow streams): no catch-up burst
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", relay_port, timeout=30)
        kind = rng.choices(kinds, weights)[0]
        if not one_request(conn, key, kind, tally):
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


ADMIN_READS = ("/admin/api/usage/summary", "/admin/api/requests?limit=50", "/admin/api/usage?dimension=key")


def admin_login(admin_url):
    code, body, _ = call("POST", admin_url + "/admin/api/login",
                         json.dumps({"username": ADMIN_USER, "password": ADMIN_PASSWORD}).encode(),
                         {"content-type": "application/json"})
    if code != 200:
        die(f"admin login answered {code}: {body[:300]!r}")
    return json.loads(body)["token"]


def admin_worker(admin_url, token, every, stop, tally):
    """Logs in once (`token`), then reads the usage summary, the request log and the key totals
    every `every` seconds."""
    h = {"authorization": "Bearer " + token}
    while not stop.wait(every):
        worst = 0.0
        for path in ADMIN_READS:
            t0 = time.monotonic()
            try:
                code, body, _ = call("GET", admin_url + path, headers=h, timeout=30)
                if code == 200:
                    json.loads(body)
            except (OSError, ValueError) as e:
                code = type(e).__name__
            ms = (time.monotonic() - t0) * 1000
            worst = max(worst, ms)
            with tally.lock:
                tally.admin[path].append((code, ms))
        with tally.lock:
            tally.admin_window_max_ms = max(tally.admin_window_max_ms, worst)


# ---------------------------------------------------------------------------------------------
# Reading what the relay stored


def stored_via_admin(admin_url, token):
    """{dimension: {subject id: counters}} from /admin/api/usage/summary, or None."""
    try:
        code, body, _ = call("GET", admin_url + "/admin/api/usage/summary",
                             headers={"authorization": "Bearer " + token}, timeout=30)
    except OSError:
        return None
    if code != 200:
        return None
    return json.loads(body)["by_dimension"]


def stored_via_redis(redis_url, prefix, dimension, ids):
    """{id: counters} from the total buckets `{prefix}u:<dimension>:total:0:<id>`, or None."""
    return redis_try(redis_url, lambda r: {i: r.hgetall(f"{prefix}u:{dimension}:total:0:{i}") for i in ids})


def counters(d):
    return {f: int((d or {}).get(f, 0)) for f in ("requests", "errors") + TOKEN_FIELDS}


# ---------------------------------------------------------------------------------------------
# The relay's log

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TS = re.compile(r"^\S*\d{4}-\d\d-\d\dT[0-9:.]+Z\s+")
VARYING = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b[0-9a-f]{16,}\b"
                     r"|(?<=[=:])\s*\d+(\.\d+)?(ms|µs|s)?\b|\d{4,}")


def summarize_log(path, limit=15):
    """Distinct WARN/ERROR lines with counts (timestamps, ids and numbers after `=` masked)."""
    c = collections.Counter()
    if not os.path.exists(path):
        return c.most_common(0)
    with open(path, errors="replace") as f:
        for l in f:
            l = TS.sub("", ANSI.sub("", l.rstrip("\n")))
            if "WARN" in l or "ERROR" in l or "panicked" in l:
                c[VARYING.sub("#", l)[:300]] += 1
    return c.most_common(limit)


# ---------------------------------------------------------------------------------------------


def commit():
    try:
        rev = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (plus uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def fnum(x, spec=","):
    """`x` formatted, or n/a when unknown."""
    if x is None:
        return "n/a"
    return format(int(x) if spec in (",", "+,") else x, spec)


def fmt_counter(c):
    return ", ".join(f"{k}×{v:,}" for k, v in sorted(c.items())) or "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--relay-bin", required=True)
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--minutes", type=float, default=30.0, help="traffic duration (default 30)")
    ap.add_argument("--out", default=os.path.join(HERE, "last-run.md"))
    ap.add_argument("--redis-url", default=None,
                    help="use this Redis (under a random prefix, deleted at the end) instead of a private "
                         "redis-server")
    ap.add_argument("--redis-server", default="redis-server", help="the redis-server binary to start")
    ap.add_argument("--relay-threads", type=int, default=2)
    ap.add_argument("--rate", type=float, default=150.0,
                    help="requests/s of the fast plain-key traffic, over --fast-threads (default 150)")
    ap.add_argument("--fast-threads", type=int, default=2)
    ap.add_argument("--slow-threads", type=int, default=4,
                    help="threads sending slow streams back to back on the plain key (default 4)")
    ap.add_argument("--cut-fraction", type=float, default=1 / 3,
                    help="share of the slow streams the client cuts after the first event (default 1/3)")
    ap.add_argument("--rate-key-rps", type=float, default=20.0, help="requests/s on the rate-limited key")
    ap.add_argument("--rate-key-limit", type=int, default=600,
                    help="the rate-limited key's requests per 1-minute window (default 600: half of "
                         "--rate-key-rps 20 is refused)")
    ap.add_argument("--conc-threads", type=int, default=4,
                    help="threads on the key with concurrency limit 2 (default 4)")
    ap.add_argument("--conc-rps", type=float, default=8.0, help="requests/s per concurrency-key thread")
    ap.add_argument("--admin-every", type=float, default=5.0, help="seconds between admin reads")
    ap.add_argument("--sample-every", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=120.0,
                    help="seconds of warm-up before the reference RSS (at most half the run; default 120)")
    ap.add_argument("--rss-growth-limit", type=float, default=1.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args()

    duration = args.minutes * 60.0
    warmup = min(args.warmup, duration / 2)
    tmp = tempfile.mkdtemp(prefix="relay-soak-")
    prefix = f"soak-{os.urandom(4).hex()}:"
    load_start = os.getloadavg()
    started_at = datetime.datetime.now()
    procs = []
    R = {}  # results for the report
    try:
        run(args, tmp, prefix, duration, warmup, procs, R)
    except SetupError as e:
        print(f"soak: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        for p in reversed(procs):
            p.stop()
        if args.redis_url:
            redis_try(args.redis_url, lambda r: r.delete_prefix(prefix))
        if args.keep:
            print(f"soak: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text, failed = report(args, R, duration, warmup, prefix, load_start, started_at)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"\n(written to {os.path.relpath(args.out)})", file=sys.stderr)
    sys.exit(1 if failed else 0)


def run(args, tmp, prefix, duration, warmup, procs, R):
    for b in (args.relay_bin, args.mock_bin):
        if not os.access(b, os.X_OK):
            die(f"{b} is not an executable file")
    # Redis
    if args.redis_url:
        redis_url = args.redis_url
        if redis_try(redis_url, lambda r: r.cmd("PING")) != "PONG":
            die(f"no Redis answers at {redis_url}")
        R["redis"] = f"`{redis_url}` (given), prefix `{prefix}`"
    else:
        if not shutil.which(args.redis_server):
            die(f"{args.redis_server} not found (install redis-server, or pass --redis-url)")
        _, redis_url = start_redis(procs, tmp, args.redis_server)
        version = subprocess.run([args.redis_server, "--version"], capture_output=True, text=True).stdout.split()
        ver = next((v.split("=", 1)[1] for v in version if v.startswith("v=")), "?")
        R["redis"] = f"a private `redis-server` {ver} (no persistence), prefix `{prefix}`"

    # Mocks
    mocks, mock_procs = {}, {}
    for name in ("ok-a", "ok-b"):
        mock_procs[name], mocks[name] = start_mock(procs, args.mock_bin, name, tmp)
    mock_procs["limited"], mocks["limited"] = start_mock(procs, args.mock_bin, "limited", tmp,
                                                         ("--status", "429", "--retry-after", "1"))
    code, body, h = call("POST", mocks["limited"] + "/v1/messages", request_body(False),
                         {"content-type": "application/json"})
    if code != 429 or b"rate_limit_error" not in body:
        die(f"the 429 mock answered {code} {body[:200]!r}")
    R["mock_before"] = {n: mock_requests(u) for n, u in mocks.items()}

    # Relay
    relay_port, admin_port = free_port(), free_port()
    relay_url, admin_url = f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{admin_port}"
    conf = os.path.join(tmp, "relay.yaml")
    with open(conf, "w") as f:
        f.write(relay_config(relay_port, admin_port, os.path.join(tmp, "data"), args.relay_threads, mocks,
                             redis_url, prefix, args.rate_key_limit))
    relay_log = os.path.join(tmp, "relay.log")
    relay = Proc([args.relay_bin, "--config", conf], relay_log,
                 env=dict(os.environ, RELAY_LOG=os.environ.get("RELAY_LOG", "warn")))
    procs.append(relay)
    wait_for(lambda: call("GET", relay_url + "/health", timeout=2)[0] == 200, "relay", proc=relay)
    wait_for(lambda: call("GET", admin_url + "/health", timeout=2)[0] in (200, 503), "relay admin", proc=relay)
    R["rss_fresh_kb"] = status_kb(relay.pid, "VmRSS")
    token = admin_login(admin_url)

    tally = Tally()
    R["tally"] = tally
    # Smoke, counted like the rest: each key answers 200 both ways through the relay.
    for key in KEYS:
        for kind in (JSON, STREAM):
            conn = http.client.HTTPConnection("127.0.0.1", relay_port, timeout=30)
            one_request(conn, key, kind, tally)
            conn.close()
    if sum(sum(c.values()) for c in tally.ok.values()) != 2 * len(KEYS):
        die(f"smoke requests through the relay failed: 200s {tally.ok}, other {tally.other}, "
            f"client errors {tally.client_err}, notes {dict(tally.notes)}\n{tail_of(relay_log)}")

    # Traffic
    stop = threading.Event()
    threads = []
    seed = args.seed

    def spawn(target, *a):
        nonlocal seed
        seed += 1
        t = threading.Thread(target=target, args=a, daemon=True)
        threads.append(t)
        t.start()

    cut = max(0.0, min(1.0, args.cut_fraction))
    for _ in range(args.fast_threads):
        spawn(worker, relay_port, "plain", (JSON, STREAM), (1, 1), args.rate / max(1, args.fast_threads), stop,
              tally, seed)
    for _ in range(args.slow_threads):
        spawn(worker, relay_port, "plain", (SLOW, CUT), (1 - cut, cut), 0, stop, tally, seed)
    spawn(worker, relay_port, "rate", (JSON, STREAM), (1, 1), args.rate_key_rps, stop, tally, seed)
    for _ in range(args.conc_threads):
        spawn(worker, relay_port, "conc", (JSON, STREAM, SLOW, CUT), (1, 1, 1.5, 0.5), args.conc_rps, stop, tally,
              seed)
    spawn(admin_worker, admin_url, token, args.admin_every, stop, tally)
    R["threads"] = len(threads)

    samples = []
    R["samples"] = samples
    t_start = time.monotonic()
    last_ticks, last_t = cpu_ticks(relay.pid), t_start

    def sample(now):
        nonlocal last_ticks, last_t
        ticks = cpu_ticks(relay.pid)
        m = read_metrics(admin_url)
        ok, refused, other, err = tally.snapshot()
        with tally.lock:
            admin_ms, tally.admin_window_max_ms = tally.admin_window_max_ms, 0.0
        samples.append(dict(
            t=now - t_start, rss_kb=status_kb(relay.pid, "VmRSS"),
            cpu=(ticks - last_ticks) / CLK_TCK / (now - last_t) * 100 if now > last_t else None,
            fds=fd_count(relay.pid), in_flight=metric_value(m, "relay_in_flight_requests"),
            ok=ok, refused=refused, other=other, err=err,
            failovers=sum(metric_by(m, "relay_failovers_total", "reason").values()) if m is not None else None,
            redis_mb=(lambda b: b / 2**20 if b is not None else None)(redis_try(redis_url, Redis.used_memory)),
            admin_ms=admin_ms))
        last_ticks, last_t = ticks, now
        s = samples[-1]
        print(f"  t={s['t']:6.0f}s  RSS {s['rss_kb'] / 1024:6.1f} MB  CPU {fnum(s['cpu'], '5.1f')}%  fds {s['fds']}  "
              f"200 {ok:,}  refused {refused:,}  other {other}  client errors {err}  failovers {s['failovers']}",
              file=sys.stderr, flush=True)

    sample(t_start)
    next_sample = t_start + args.sample_every
    end = t_start + duration
    while True:
        now = time.monotonic()
        if relay.p.poll() is not None:
            R["relay_died"] = relay.p.returncode
            break
        if now >= end:
            break
        if now >= next_sample:
            sample(now)
            next_sample += args.sample_every
            continue
        time.sleep(min(next_sample, end) - now)
    if "relay_died" not in R and (not samples or time.monotonic() - t_start - samples[-1]["t"] > 1.0):
        sample(time.monotonic())  # the last sample, at the end of the traffic
    R["rss_end_kb"] = samples[-1]["rss_kb"]
    R["traffic_s"] = time.monotonic() - t_start

    # Stop the traffic: every worker finishes the request it is in (a slow stream: < 1 s).
    stop.set()
    for t in threads:
        t.join(60)
    R["stuck_threads"] = sum(t.is_alive() for t in threads)
    if "relay_died" in R:
        R["relay_log"] = summarize_log(relay_log)
        R["relay_log_tail"] = tail_of(relay_log)
        return

    # Wait for the relay to finish what it has in flight, then for its usage flush
    # (stats.flush_interval 1 s), and read until two reads 1 s apart agree.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and metric_value(read_metrics(admin_url), "relay_in_flight_requests"):
        time.sleep(0.2)
    time.sleep(3.0)
    key_ids = [f"config.{k}" for k in KEYS]
    acct_ids = [f"config.{a}" for a in ACCOUNTS]
    prev, stored, reads = None, None, 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = stored_via_admin(admin_url, token)
        reads += 1
        if stored is not None and stored == prev:
            break
        prev = stored
        time.sleep(1.0)
    R["stored_admin"] = stored
    R["stored_reads"] = reads
    R["stored_redis"] = {"key": stored_via_redis(redis_url, prefix, "key", key_ids),
                         "account": stored_via_redis(redis_url, prefix, "account", acct_ids)}
    R["metrics"] = read_metrics(admin_url)
    R["mock_after"] = {n: mock_requests(u) for n, u in mocks.items()}
    R["rss_idle_kb"] = status_kb(relay.pid, "VmRSS")
    R["cpu_total_s"] = cpu_ticks(relay.pid) / CLK_TCK
    R["fds_idle"] = fd_count(relay.pid)
    # Stop the relay (it flushes once more on the way out) and read Redis again: anything added
    # now was usage the flush above had not written.
    R["relay_exit"] = relay.stop()
    R["stored_redis_after_stop"] = {"key": stored_via_redis(redis_url, prefix, "key", key_ids)}
    R["relay_log"] = summarize_log(relay_log)


def report(args, R, duration, warmup, prefix, load_start, started_at):
    out = []
    w = out.append
    failures = []
    tally = R.get("tally")
    samples = R.get("samples", [])
    w(f"# claude-relay soak test, {started_at.strftime('%Y-%m-%d %H:%M')}")
    w("")
    w(f"Commit `{commit()}`; {os.cpu_count()} CPUs; load average at the start "
      f"{' / '.join(f'{x:.2f}' for x in load_start)}, at the end {' / '.join(f'{x:.2f}' for x in os.getloadavg())}. "
      f"Traffic {R.get('traffic_s', 0) / 60:.1f} min (`--minutes {args.minutes:g}`). Relay: release build, "
      f"`threads: {args.relay_threads}`, `RELAY_LOG={os.environ.get('RELAY_LOG', 'warn')}`, Redis store on "
      f"{R.get('redis', '?')}, `stats.flush_interval: 1s`; accounts `ok-a`, `ok-b` (normal mocks) and "
      f"`limited` (a mock answering 429 with `retry-after: 1` to everything), all priority 50. Keys: `plain`, "
      f"`rate` (`rate_limit: {{ window_minutes: 1, requests: {args.rate_key_limit} }}`), `conc` "
      f"(`concurrency: {{ limit: 2 }}`). Load: {args.fast_threads} thread(s) at {args.rate:g} req/s in all on "
      f"`plain` (half streamed), {args.slow_threads} thread(s) of back-to-back slow streams on `plain` "
      f"({SLOW_DELAY_MS} ms between ~13 chunks; {args.cut_fraction:.0%} cut by the client after the first "
      f"event), 1 thread at {args.rate_key_rps:g} req/s on `rate`, {args.conc_threads} thread(s) at "
      f"{args.conc_rps:g} req/s each on `conc` (all four kinds), admin reads every {args.admin_every:g} s. "
      f"Client, mocks, Redis and relay share the machine.")
    w("")
    if tally is None:
        w("The run stopped before the traffic started.")
        return "\n".join(out), True

    # ---- verdict, filled in below
    verdict_at = len(out)
    w("")

    # ---- samples
    w("## Memory and CPU over time")
    w("")
    w(f"One row every {args.sample_every:g} s. RSS is the relay's `VmRSS`; CPU is user+system time over the "
      f"interval, in % of one core; fds are its open descriptors; in flight is `relay_in_flight_requests`; the "
      f"counts are the client's, cumulative; failovers is `relay_failovers_total`; Redis MB is `used_memory`; "
      f"admin ms is the slowest admin read in the interval.")
    w("")
    w("| t (s) | RSS MB | CPU % | fds | in flight | 200 | limit 429 | other statuses | client errors | failovers | "
      "Redis MB | admin ms |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        w(f"| {s['t']:.0f} | {s['rss_kb'] / 1024:.1f} | {fnum(s['cpu'], '.1f')} | {fnum(s['fds'])} | {fnum(s['in_flight'])} | "
          f"{s['ok']:,} | {s['refused']:,} | {s['other']:,} | {s['err']:,} | {fnum(s['failovers'])} | "
          f"{fnum(s['redis_mb'], '.1f')} | {s['admin_ms']:.0f} |")
    w("")
    rss_ref = next((s for s in samples if s["t"] >= warmup - 1.0), None)
    rss_line = None
    if rss_ref and samples:
        ratio = R["rss_end_kb"] / rss_ref["rss_kb"] if rss_ref["rss_kb"] else float("inf")
        rss_line = (f"RSS after the warm-up (t = {rss_ref['t']:.0f} s): {rss_ref['rss_kb'] / 1024:.1f} MB; at the end "
                    f"of the traffic: {R['rss_end_kb'] / 1024:.1f} MB (× {ratio:.2f}, limit × "
                    f"{args.rss_growth_limit:g})")
        if ratio > args.rss_growth_limit:
            failures.append(f"RSS grew × {ratio:.2f} after the warm-up (limit × {args.rss_growth_limit:g})")
    w(f"Relay RSS right after start: {R.get('rss_fresh_kb', 0) / 1024:.1f} MB"
      + (f"; idle after the traffic and the flush: {R['rss_idle_kb'] / 1024:.1f} MB, {R['fds_idle']} fds"
         if "rss_idle_kb" in R else "")
      + (f"; CPU time over the whole run {R['cpu_total_s']:.1f} s" if "cpu_total_s" in R else "") + ".")
    w("")

    # ---- outcomes
    ok_total = sum(sum(c.values()) for c in tally.ok.values())
    refused_total = sum(tally.refused.values())
    other_total = collections.Counter()
    err_total = collections.Counter()
    broken_total = collections.Counter()
    for k in KEYS:
        other_total.update(tally.other[k])
        err_total.update(tally.client_err[k])
        broken_total.update(tally.broken[k])
    w("## Outcomes (client side)")
    w("")
    w("| key | sent | 200 non-streamed | 200 streamed | 200 slow stream | 200 cut stream | limit 429 | "
      "other statuses | client errors | 200 with a broken body |")
    w("|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    for k in list(KEYS) + ["all"]:
        keys = list(KEYS) if k == "all" else [k]
        ok = collections.Counter()
        other, err, broken = collections.Counter(), collections.Counter(), collections.Counter()
        for kk in keys:
            ok.update(tally.ok[kk])
            other.update(tally.other[kk])
            err.update(tally.client_err[kk])
            broken.update(tally.broken[kk])
        refused = sum(tally.refused[kk] for kk in keys)
        sent = sum(ok.values()) + refused + sum(other.values()) + sum(err.values())
        name = f"`{k}`" if k != "all" else "**all**"
        w(f"| {name} | {sent:,} | {ok[JSON]:,} | {ok[STREAM]:,} | {ok[SLOW]:,} | {ok[CUT]:,} | {refused:,} | "
          f"{fmt_counter(other)} | {fmt_counter(err)} | {fmt_counter(broken)} |")
    w("")
    sent_total = ok_total + refused_total + sum(other_total.values()) + sum(err_total.values())
    w(f"{sent_total:,} requests in {R.get('traffic_s', 0):.0f} s ≈ {sent_total / max(1.0, R.get('traffic_s', 1)):.0f} "
      f"req/s (the {2 * len(KEYS)} smoke requests before the traffic included). \"limit 429\" is a 429 `rate_limit_error` with "
      f"`x-relay-error-source: relay` (the key's rate window or concurrency limit refused it); \"other statuses\" "
      f"is every other non-200 answer; \"client errors\" are requests that got no status (connection refused, "
      f"reset or timed out before the head). A cut stream is read until its first event (`message_start`) is "
      f"complete, then the socket is shut down with the rest unread.")
    if tally.notes:
        w("")
        w("Other answers (status, source, start of the body):")
        w("")
        w("```")
        for l, n in tally.notes.most_common(10):
            w(f"{n:>7} × {l}")
        w("```")
    w("")
    if "relay_died" in R:
        failures.append(f"the relay exited during the traffic (status {R['relay_died']})")
        w(f"**The relay exited during the traffic** (status {R['relay_died']}). Its log ends with:")
        w("")
        w("```")
        w(R.get("relay_log_tail", "").rstrip())
        w("```")
        w("")
        out[verdict_at] = verdict(failures, rss_line, None)
        return "\n".join(out), True

    # ---- relay counters vs client
    m = R.get("metrics")
    statuses = metric_by(m, "relay_requests_total", "status", endpoint="messages")
    client_statuses = collections.Counter(tally.by_status)
    rejections = metric_by(m, "relay_rejections_total", "reason")
    failovers = metric_by(m, "relay_failovers_total", "reason")
    mb, ma = R.get("mock_before", {}), R.get("mock_after", {})
    mock_delta = {n: (ma.get(n) - mb.get(n)) if None not in (ma.get(n), mb.get(n)) else None for n in ACCOUNTS}
    w("## The relay's counters against the client's")
    w("")
    w("| what | relay | client | difference |")
    w("|---|---:|---:|---:|")
    checks = []
    for st in sorted(set(statuses) | set(client_statuses)):
        checks.append((f"`relay_requests_total{{endpoint=\"messages\",status=\"{st}\"}}` vs answers with status {st}",
                       statuses[st], client_statuses[st]))
    limit_rej = rejections["rate_limit"] + rejections["concurrency_limit"]
    checks.append(("`relay_rejections_total` rate_limit + concurrency_limit vs limit 429s", limit_rej, refused_total))
    ok_mocks = (mock_delta["ok-a"] or 0) + (mock_delta["ok-b"] or 0)
    checks.append(("requests the `ok-a` + `ok-b` mocks answered vs 200s", ok_mocks, ok_total))
    checks.append(("requests the `limited` mock answered vs `relay_failovers_total`",
                   mock_delta["limited"], sum(failovers.values())))
    counter_diffs = 0
    for what, a, b in checks:
        d = (a - b) if None not in (a, b) else None
        counter_diffs += bool(d)
        w(f"| {what} | {fnum(a)} | {fnum(b)} | {'**' + fnum(d, '+,') + '**' if d else fnum(d)} |")
    w("")
    w(f"`relay_rejections_total` by reason: {fmt_counter(rejections)}. `relay_failovers_total` by reason: "
      f"{fmt_counter(failovers)}. Mock requests during the run: "
      + ", ".join(f"`{n}` {mock_delta[n]:,}" if mock_delta[n] is not None else f"`{n}` n/a" for n in ACCOUNTS)
      + ". (The last row compares two relay-side views of one thing: each 429 from `limited` should move one "
        "request to another account.)")
    w("")

    # ---- usage exactness
    served = {}
    for k in KEYS:
        c = {"requests": sum(tally.ok[k].values()) + sum(tally.other[k].values()),
             "errors": sum(tally.other[k].values())}
        c.update({f: tally.tokens[k][f] for f in TOKEN_FIELDS})
        served[k] = c
    sa = R.get("stored_admin") or {}
    sr = R.get("stored_redis") or {}
    sr_after = (R.get("stored_redis_after_stop") or {}).get("key")
    w("## Usage: stored against served")
    w("")
    w("**Served**, per key, is what the client can vouch for: `requests` = every answer with status 200 (non-streamed, "
      "streamed, slow and cut streams; a cut stream reached the relay and was answered 200 before the client left) "
      "plus every \"other status\" answer (an error after the key's filters passed, which the relay also counts as a "
      "request, with `errors` + 1); limit 429s are refused before a request is counted and are not in it. Tokens = "
      "the usage in the events the client read, by the relay's own rule (each field of `message_start`, overridden "
      "by `message_delta`): a non-streamed or complete stream counts the whole answer (21 input, 7 output, 3 cache "
      "read, 5 cache write 5m), a cut stream what its `message_start` said (21 input, 1 output, 3 cache read, 5 cache "
      "write 5m); the relay has read no further when it notices the client is gone, as the next usage event is "
      f"~{8 * SLOW_DELAY_MS} ms later. **Stored** is the all-time total bucket of each key: through the admin API "
      "(`GET /admin/api/usage/summary`, `by_dimension.key`) and straight from Redis (`HGETALL "
      f"{prefix}u:key:total:0:config.<key>`); both must equal served. `errors` is shown but not checked.")
    w("")
    w(f"Read {R.get('stored_reads', 0)} time(s) until two reads 1 s apart agreed, from 3 s after the last request "
      f"ended.")
    w("")
    w("| key | field | served | stored (admin API) | stored (Redis) | difference |")
    w("|---|---|---:|---:|---:|---:|")
    usage_diffs = []
    admin_keys = (sa.get("key") or {}) if sa else {}
    redis_keys = sr.get("key") or {}
    for k in KEYS:
        kid = f"config.{k}"
        a = counters(admin_keys.get(kid)) if sa else None
        r = counters(redis_keys.get(kid)) if sr.get("key") is not None else None
        for f in ("requests", "errors") + TOKEN_FIELDS:
            sv = served[k][f]
            av = a[f] if a is not None else None
            rv = r[f] if r is not None else None
            diffs = [x - sv for x in (av, rv) if x is not None]
            d = next((x for x in diffs if x), 0)
            checked = f != "errors"
            if checked and (av is None or rv is None):
                usage_diffs.append(f"`{k}` {f}: stored usage unreadable")
            elif checked and any(diffs):
                usage_diffs.append(f"`{k}` {f}: served {sv:,}, stored {av if av is not None else 'n/a'} (admin) / "
                                   f"{rv if rv is not None else 'n/a'} (Redis)")
            mark = ("**" + format(d, "+,") + "**") if (d and checked) else (format(d, "+,") if d else "0")
            w(f"| `{k}` | {f}{'' if checked else ' (not checked)'} | {sv:,} | "
              f"{format(av, ',') if av is not None else 'n/a'} | {format(rv, ',') if rv is not None else 'n/a'} | "
              f"{mark} |")
    w("")
    if sa:
        errs = {k: (counters(admin_keys.get(f"config.{k}"))["errors"], served[k]["errors"], tally.ok[k][CUT])
                for k in KEYS}
        if all(st == other + cut for st, other, cut in errs.values()):
            w("`errors` (not checked): for every key the stored count equals the other-status answers plus the "
              "streams the client cut (" + ", ".join(f"`{k}` {st:,} = {o:,} + {c:,}" for k, (st, o, c) in errs.items())
              + "): the relay's usage statistics count a request whose client went away as an error, though "
                "`relay_requests_total` counts it under 200.")
        else:
            w("`errors` (not checked), stored against other statuses + cut streams: "
              + ", ".join(f"`{k}` {st:,} vs {o:,} + {c:,}" for k, (st, o, c) in errs.items()) + ".")
        w("")
    if sr_after is not None and redis_keys:
        changed = [k for k in KEYS if counters(sr_after.get(f"config.{k}")) != counters(redis_keys.get(f"config.{k}"))]
        if changed:
            usage_diffs.append("the relay's shutdown flush added usage after the comparison: "
                               + ", ".join(f"`{k}`" for k in changed))
            w("After the relay was stopped (SIGTERM; it flushes once more), Redis held more for "
              + ", ".join(f"`{k}` ({counters(sr_after.get('config.' + k))})" for k in changed)
              + ": usage the regular flush had not written within the wait.")
        else:
            w(f"After the relay was stopped (SIGTERM, exit status {R.get('relay_exit')}; it flushes once more), Redis "
              f"held the same totals: nothing was still waiting to be flushed.")
        w("")
    # Per account: the usage stored for each account against what its mock answered.
    acct_admin = (sa.get("account") or {}) if sa else {}
    acct_redis = sr.get("account") or {}
    w("Per account (the account of a request's last attempt): stored requests against the requests its mock "
      "answered during the run.")
    w("")
    w("| account | mock requests | stored requests (admin API) | stored requests (Redis) | stored tokens "
      "(input / output / cache read / cache write 5m) |")
    w("|---|---:|---:|---:|---|")
    for a in ACCOUNTS:
        ca = counters(acct_admin.get(f"config.{a}"))
        cr = counters(acct_redis.get(f"config.{a}"))
        md = mock_delta[a]
        note = ""
        if a != "limited" and md is not None and (ca["requests"] != md or cr["requests"] != md):
            note = " **≠**"
            usage_diffs.append(f"account `{a}`: mock answered {md:,}, stored {ca['requests']:,} (admin) / "
                               f"{cr['requests']:,} (Redis)")
        w(f"| `{a}` | {fnum(md)} | {ca['requests']:,}{note} | {cr['requests']:,} | "
          f"{ca['input_tokens']:,} / {ca['output_tokens']:,} / {ca['cache_read_tokens']:,} / "
          f"{ca['cache_write_5m_tokens']:,} |")
    w("")
    w("`limited` answers only 429s, so no request ends there unless every other account is out of the pool; its "
      "mock count is the failovers above, not a usage figure.")
    w("")
    if usage_diffs:
        failures.append("stored usage differs from served: " + "; ".join(usage_diffs))

    # ---- admin reads
    w("## Admin reads")
    w("")
    w("| endpoint | calls | statuses | median ms | max ms |")
    w("|---|---:|---|---:|---:|")
    with tally.lock:
        admin = {k: list(v) for k, v in tally.admin.items()}
    admin_bad = 0
    for path, calls in admin.items():
        st = collections.Counter(str(c) for c, _ in calls)
        admin_bad += sum(n for s, n in st.items() if s != "200")
        ms = sorted(x for _, x in calls)
        w(f"| `GET {path}` | {len(calls):,} | {fmt_counter(st)} | {ms[len(ms) // 2]:.1f} | {ms[-1]:.1f} |")
    w("")
    w("Logged in once (`POST /admin/api/login`) before the traffic; the same session token is used throughout.")
    w("")

    # ---- relay log
    if R.get("relay_log"):
        w("Relay WARN/ERROR log lines over the whole run (distinct after masking ids and numbers, with counts):")
        w("")
        w("```")
        for l, n in R["relay_log"]:
            w(f"{n:>7} × {l}")
        w("```")
    else:
        w("The relay logged no WARN/ERROR lines.")
    w("")

    notes = []
    if sum(err_total.values()):
        notes.append(f"client errors: {fmt_counter(err_total)}")
    if sum(other_total.values()):
        notes.append(f"other statuses: {fmt_counter(other_total)}")
    if sum(broken_total.values()):
        notes.append(f"200s with a broken body: {fmt_counter(broken_total)}")
    if counter_diffs:
        notes.append(f"{counter_diffs} relay counter(s) differ from the client's (table above)")
    if admin_bad:
        notes.append(f"{admin_bad} admin read(s) did not answer 200")
    if R.get("stuck_threads"):
        notes.append(f"{R['stuck_threads']} client thread(s) did not stop within 60 s")
    if refused_total == 0:
        notes.append("no limit 429 at all: the rate and concurrency limits were not exercised")
    if sum(failovers.values()) == 0:
        notes.append("no failover at all: the 429 account was never tried")
    out[verdict_at] = verdict(failures, rss_line, notes)
    return "\n".join(out), bool(failures)


def verdict(failures, rss_line, notes):
    lines = ["## Verdict", ""]
    lines.append("**FAIL**" if failures else "**PASS**: no RSS growth past the limit, stored usage equals served.")
    lines.append("")
    for f in failures:
        lines.append(f"- FAIL: {f}")
    if rss_line:
        lines.append(f"- {rss_line}")
    for n in notes or ():
        lines.append(f"- Note: {n}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
