#!/usr/bin/env python3
"""Load test of claude-relay against a local mock upstream (Python 3 standard library only).

Started by run.sh, which builds the binaries and installs wrk. This script:
  1. starts the mock upstream and the relay (temp config, embedded store in a temp dir),
  2. runs wrk for every (stream, concurrency) both direct to the mock and through the relay,
  3. runs the slow-stream test (many concurrent streams, 100 ms between chunks) through the relay,
  4. with --failover-row: starts a second relay over three accounts of the same priority, one of
     them a mock that answers 429 to everything, and measures the failover under load,
  5. prints a Markdown report and writes it to --out.

Everything listens on 127.0.0.1 only, and every wrk run is bounded in time.
"""

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "post.lua")
SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
API_KEY = "cr_" + "1b" * 32
# Bound to a claude-oauth account (a setup token) on the same mock: the OAuth serving path.
OAUTH_KEY = "cr_" + "2c" * 32
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, what, timeout=30.0, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.05)
    tail = ""
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-30:])
    sys.exit(f"loadtest: {what} did not become ready\n{tail}")


# The HTTPS mock's certificate (--upstream-tls) is checked by the relay, not by these helpers.
_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE


def http(method, url, body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_UNVERIFIED if url.startswith("https:") else None) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def request_body(stream):
    return ('{"model":"claude-sonnet-4-5","max_tokens":64,"stream":%s,'
            '"messages":[{"role":"user","content":"hello there"}]}' % ("true" if stream else "false")).encode()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" the fields start at field 3 (state); utime is field 14, stime 15.
    return int(fields[11]) + int(fields[12])


def status_kb(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


METRIC_RE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def metric_by_label(admin_url, name, label):
    """Counter `name` (admin /metrics) summed by one label, or None when /metrics is unavailable.
    A counter that has never been incremented is absent from /metrics: an empty Counter."""
    try:
        code, body, _ = http("GET", admin_url + "/metrics", timeout=5)
    except OSError:
        return None
    if code != 200:
        return None
    out = collections.Counter()
    for line in body.decode(errors="replace").splitlines():
        m = METRIC_RE.match(line.strip())
        if not m or m.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        out[labels.get(label, "?")] += int(float(m.group(3)))
    return out


def relay_statuses(admin_url):
    """relay_requests_total by status (all endpoints)."""
    return metric_by_label(admin_url, "relay_requests_total", "status")


def relay_failovers(admin_url):
    """relay_failovers_total by reason."""
    return metric_by_label(admin_url, "relay_failovers_total", "reason")


def delta(after, before):
    """after − before for two Counters (None when either is unknown); keeps zero entries out."""
    if after is None or before is None:
        return None
    return collections.Counter({k: after[k] - before[k] for k in after if after[k] - before[k]})


def mock_requests(url):
    """Requests a mock has answered (its GET /_mock/stats), or None."""
    try:
        code, body, _ = http("GET", url + "/_mock/stats", timeout=5)
        return json.loads(body)["requests"] if code == 200 else None
    except (OSError, ValueError, KeyError):
        return None


def gauges(admin_url):
    """The relay's requests in flight and its allocator figures (`relay_allocator_bytes` by kind),
    as {"in_flight": n, "allocated": bytes, ...}; empty when /metrics is unavailable."""
    try:
        code, body, _ = http("GET", admin_url + "/metrics", timeout=5)
    except OSError:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("relay_in_flight_requests "):
            out["in_flight"] = int(float(line.split()[1]))
        elif line.startswith("relay_allocator_bytes{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = int(float(line.split()[-1]))
    return out


class LogTail:
    """Reads the relay log from where it was last read."""

    def __init__(self, path):
        self.path = path
        self.pos = 0

    def new_lines(self):
        with open(self.path, errors="replace") as f:
            f.seek(self.pos)
            text = f.read()
            self.pos = f.tell()
        return [l for l in text.splitlines() if l.strip()]


ANSI = re.compile(r"\x1b\[[0-9;]*m")
TS = re.compile(r"^\S*\d{4}-\d\d-\d\dT[0-9:.]+Z\s+")


def summarize_log(lines, limit=12):
    """Distinct WARN/ERROR lines with counts (timestamps stripped)."""
    c = collections.Counter()
    for l in lines:
        l = TS.sub("", ANSI.sub("", l))
        if "WARN" in l or "ERROR" in l or "panicked" in l:
            c[l[:300]] += 1
    return c.most_common(limit)


def run_wrk(url, conc, seconds, stream, chunk_delay_ms=None, timeout_s=10, api_key=API_KEY, chat_model=None,
            gemini=False, session=None):
    env = dict(os.environ, LOAD_STREAM="true" if stream else "false", LOAD_API_KEY=api_key,
               LOAD_SESSION=session or "",
               LOAD_CHUNK_DELAY_MS=str(chunk_delay_ms or ""),
               LOAD_CHAT="1" if chat_model else "", LOAD_MODEL=chat_model or "",
               LOAD_GEMINI="1" if gemini else "")
    cmd = ["wrk", "-t", "1", "-c", str(conc), "-d", f"{seconds}s", "--timeout", f"{timeout_s}s",
           "-s", LUA, url]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    for line in p.stdout.splitlines():
        if line.startswith("LOADJSON "):
            return json.loads(line[len("LOADJSON "):])
    sys.exit(f"loadtest: wrk gave no result (exit {p.returncode})\n{p.stdout}\n{p.stderr}")


# The marker of the Gemini API rows among the targets (their "chat model").
GEMINI = object()


def gemini_path(stream, prefix):
    """The Gemini API path of the load requests, under `prefix` (`/gemini` on the relay)."""
    call = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"{prefix}/v1beta/models/gemini-2.5-pro:{call}"


def fmt_ms(us):
    return f"{us / 1000:.2f}"


def fmt_int(n):
    return f"{n:,}"


def fmt_statuses(c):
    if c is None:
        return "n/a"
    return ", ".join(f"{k}×{fmt_int(v)}" for k, v in sorted(c.items())) or "none"


def errors_of(r):
    parts = []
    for k in ("connect", "read", "write", "timeout"):
        if r[k]:
            parts.append(f"{k} {r[k]}")
    if r["status"]:
        parts.append(f"non-2xx {r['status']}")
    return sum(r[k] for k in ("connect", "read", "write", "timeout", "status")), ", ".join(parts)


class Proc:
    def __init__(self, cmd, log, env=None):
        self.log = log
        self.logf = open(log, "wb")
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, start_new_session=True)
        self.pid = self.p.pid

    def stop(self, grace=15.0):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if not self.logf.closed:
            self.logf.close()
        return self.p.returncode


# Every load comes from one address (127.0.0.1): the per-address connection cap is lifted.
EXTRA_CONFIG = "connections: { per_ip: 0 }\n"


def relay_config(relay_port, admin_port, data, threads, accounts, oauth_url=None, openai_url=None,
                 gemini_url=None):
    """The relay's YAML config; `accounts` are (name, base_url) of claude-console accounts. With
    `oauth_url`, a claude-oauth account there too, served only to OAUTH_KEY (bound to it). With
    `openai_url`, an `openai` account there (it serves the gpt-* models of Chat Completions). With
    `gemini_url`, a `gemini-api` account there (gemini-* models)."""
    lines = "".join(f'  - {{ name: {n}, kind: claude-console, base_url: "{u}", api_key: sk-ant-api03-load-test }}\n'
                    for n, u in accounts)
    if openai_url:
        lines += f'  - {{ name: openai, kind: openai, base_url: "{openai_url}/v1", api_key: sk-load-test }}\n'
    if gemini_url:
        lines += f'  - {{ name: gemini, kind: gemini-api, base_url: "{gemini_url}", api_key: AIza-load-test }}\n'
    keys = ""
    if oauth_url:
        lines += f'  - {{ name: oauth, kind: claude-oauth, base_url: "{oauth_url}", api_key: sk-ant-oat01-load-test }}\n'
        keys = f"  - {{ name: load-oauth, key: {OAUTH_KEY}, bind: oauth }}\n"
    return f"""listen: 127.0.0.1:{relay_port}
admin: {{ listen: 127.0.0.1:{admin_port}, username: admin, password: load-test-admin-password }}
secret_key: {SECRET}
threads: {threads}
data_dir: {data}
store: {{ backend: embedded, path: {data} }}
shutdown_grace: 2s
api_keys:
  - {{ name: load, key: {API_KEY} }}
{keys}accounts:
{lines}{EXTRA_CONFIG}"""


def start_mock(procs, mock_bin, port, threads, log, extra=()):
    """Starts a mock and waits for it; `procs` gets it first so that it is stopped whatever happens."""
    mock = Proc([mock_bin, "--listen", f"127.0.0.1:{port}", "--threads", str(threads), *extra], log)
    procs.append(mock)
    wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None,
             f"mock upstream on port {port}", proc=mock.p, log=mock.log)
    return mock


def upstream_cert(tmp):
    """A private CA and its certificate for localhost (openssl): the mock serves the certificate,
    the relay trusts the CA through SSL_CERT_FILE. Returns (ca, cert, key) paths."""
    ca, ca_key = os.path.join(tmp, "ca.pem"), os.path.join(tmp, "ca.key")
    cert, key, csr, ext = (os.path.join(tmp, n) for n in ("mock.pem", "mock.key", "mock.csr", "mock.ext"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=load test CA")
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
        "-extfile", ext)
    return ca, cert, key


# Set by --upstream-tls: the CA file the relay trusts (SSL_CERT_FILE).
RELAY_CA = None


def start_relay(procs, relay_bin, conf, relay_url, admin_url, log):
    env = dict(os.environ, RELAY_LOG=os.environ.get("RELAY_LOG", "warn"))
    if RELAY_CA:
        env["SSL_CERT_FILE"] = RELAY_CA
    relay = Proc([relay_bin, "--config", conf], log, env=env)
    procs.append(relay)
    wait_for(lambda: http("GET", relay_url + "/health", timeout=2)[0] == 200, "relay", proc=relay.p, log=log)
    wait_for(lambda: http("GET", admin_url + "/health", timeout=2)[0] in (200, 503), "relay admin",
             proc=relay.p, log=log)
    return relay


LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\dT[0-9:.]+)Z")


def bursts(times, gap=0.25):
    """Sizes of the groups of timestamps (seconds) less than `gap` apart: here, the requests
    refused each time the 429 account came back."""
    out = []
    last = None
    for t in sorted(times):
        if last is None or t - last >= gap:
            out.append(0)
        out[-1] += 1
        last = t
    return out


def failover_rows(args, tmp, ok_mock_url, procs):
    """Three accounts of the same priority behind a second relay: two normal mocks (the main one
    and a second) and one started with --status 429. Measures, per stream mode, what the client
    sees and how often the relay still sends to the refusing account."""
    limited_port, ok2_port = free_port(), free_port()
    relay_port, admin_port = free_port(), free_port()
    limited_url, ok2_url = f"http://127.0.0.1:{limited_port}", f"http://127.0.0.1:{ok2_port}"
    relay_url, admin_url = f"http://127.0.0.1:{relay_port}", f"http://127.0.0.1:{admin_port}"
    mocks = {"ok-a": ok_mock_url, "ok-b": ok2_url, "limited": limited_url}
    start_mock(procs, args.mock_bin, ok2_port, args.mock_threads, os.path.join(tmp, "mock-ok-b.log"))
    start_mock(procs, args.mock_bin, limited_port, args.mock_threads, os.path.join(tmp, "mock-429.log"),
               ("--status", "429", "--retry-after", "1"))
    data = os.path.join(tmp, "data-failover")
    conf = os.path.join(tmp, "relay-failover.yaml")
    with open(conf, "w") as f:
        f.write(relay_config(relay_port, admin_port, data, args.relay_threads, list(mocks.items())))
    relay_log = os.path.join(tmp, "relay-failover.log")
    relay = start_relay(procs, args.relay_bin, conf, relay_url, admin_url, relay_log)
    log = LogTail(relay_log)

    hdr = {"content-type": "application/json", "x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    code, body, h = http("POST", limited_url + "/v1/messages", request_body(False), hdr)
    if code != 429 or b"rate_limit_error" not in body or h.get("retry-after") != "1":
        sys.exit(f"loadtest: the 429 mock answered {code} {h} {body[:300]!r}")
    for stream in (False, True):
        code, body, _ = http("POST", relay_url + "/v1/messages", request_body(stream), hdr)
        if code != 200 or (stream and b"message_stop" not in body):
            sys.exit(f"loadtest: failover smoke request (stream={stream}) got {code}: {body[-300:]!r}\n"
                     + "\n".join(log.new_lines()[-30:]))
    time.sleep(1.5)  # let a cooldown the smoke requests caused run out
    log.new_lines()

    rows = []
    for stream in (False, True):
        before_req = {n: mock_requests(u) for n, u in mocks.items()}
        before_fo, before_st = relay_failovers(admin_url), relay_statuses(admin_url)
        t0 = cpu_ticks(relay.pid)
        r = run_wrk(relay_url + "/v1/messages", args.failover_conc, args.duration, stream)
        t1 = cpu_ticks(relay.pid)
        time.sleep(0.5)  # the answers wrk cut off finish and are counted
        after_req = {n: mock_requests(u) for n, u in mocks.items()}
        marks, refused, mark_times, other = 0, 0, [], []
        for l in log.new_lines():
            if "account out of the pool" in l and "limited" in l:
                marks += 1
                m = LOG_TIME.search(ANSI.sub("", l))
                if m:
                    mark_times.append(datetime.datetime.fromisoformat(m.group(1)).timestamp())
            elif "upstream refused; trying the next account" in l and "limited" in l:
                refused += 1
            elif "WARN" in l or "ERROR" in l or "panicked" in l:
                other.append(l)
        rows.append(dict(
            stream=stream, r=r,
            cpu_us=((t1 - t0) / CLK_TCK * 1e6 / r["requests"]) if r["requests"] else None,
            failovers=delta(relay_failovers(admin_url), before_fo),
            statuses=delta(relay_statuses(admin_url), before_st),
            mock_reqs={n: (after_req[n] - before_req[n]) if None not in (after_req[n], before_req[n]) else None
                       for n in mocks},
            marks=marks, refused=refused, bursts=bursts(mark_times), other=summarize_log(other)))
        err_n, _ = errors_of(r)
        print(f"  failover       stream={str(stream).lower():5} c={args.failover_conc:<4} "
              f"{r['requests'] / (r['duration_us'] / 1e6):>9.0f} req/s  p50 {fmt_ms(r['p50_us'])} ms  "
              f"p99 {fmt_ms(r['p99_us'])} ms  errors {err_n}  to the 429 mock {rows[-1]['mock_reqs']['limited']}",
              file=sys.stderr, flush=True)
        time.sleep(1.5)
    relay.stop()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay-bin", required=True)
    ap.add_argument("--mock-bin", required=True)
    ap.add_argument("--out", default=os.path.join(HERE, "last-run.md"))
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    ap.add_argument("--concurrency", default="1,50,200")
    ap.add_argument("--slow-conc", type=int, default=1000)
    ap.add_argument("--slow-duration", type=int, default=10)
    ap.add_argument("--slow-delay-ms", type=int, default=100)
    ap.add_argument("--settle-s", type=int, default=15,
                    help="seconds after the slow row before the memory left behind is read")
    ap.add_argument("--relay-threads", type=int, default=2)
    ap.add_argument("--mock-threads", type=int, default=1)
    ap.add_argument("--failover-row", action=argparse.BooleanOptionalAction, default=False,
                    help="also measure failover: 3 accounts, one answering 429 (run.sh turns it on)")
    ap.add_argument("--failover-conc", type=int, default=50)
    ap.add_argument("--oauth-row", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure each row through a claude-oauth account (bearer + beta merge)")
    ap.add_argument("--openai-rows", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure Chat Completions: passed through to an openai account, and "
                         "converted for the claude-console account")
    ap.add_argument("--gemini-rows", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the Gemini API passed through to a gemini-api account, and Chat "
                         "Completions converted for it")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, relay log)")
    ap.add_argument("--upstream-tls", action="store_true",
                    help="the mock serves HTTPS (HTTP/2 by ALPN, as the real APIs): the relay's upstream "
                         "streams share connections; needs openssl")
    ap.add_argument("--extra-config", default=None,
                    help="YAML appended to the relay's config (default: lift the per-address "
                         "connection cap; pass '' for a relay that predates it)")
    args = ap.parse_args()
    global EXTRA_CONFIG, RELAY_CA
    if args.extra_config is not None:
        EXTRA_CONFIG = args.extra_config + ("\n" if args.extra_config and not args.extra_config.endswith("\n") else "")
    concs = [int(c) for c in args.concurrency.split(",")]

    tmp = tempfile.mkdtemp(prefix="relay-load-")
    mock_port, relay_port, admin_port = free_port(), free_port(), free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    mock_extra = ()
    if args.upstream_tls:
        RELAY_CA, cert, key = upstream_cert(tmp)
        mock_url = f"https://localhost:{mock_port}"
        mock_extra = ("--tls-cert", cert, "--tls-key", key)
    relay_url = f"http://127.0.0.1:{relay_port}"
    admin_url = f"http://127.0.0.1:{admin_port}"
    data = os.path.join(tmp, "data")
    conf = os.path.join(tmp, "relay.yaml")
    with open(conf, "w") as f:
        f.write(relay_config(relay_port, admin_port, data, args.relay_threads, [("mock", mock_url)],
                             oauth_url=mock_url if args.oauth_row else None,
                             openai_url=mock_url if args.openai_rows else None,
                             gemini_url=mock_url if args.gemini_rows else None))

    procs = []  # stopped in reverse order at the end
    fo_rows = None
    try:
        mock = start_mock(procs, args.mock_bin, mock_port, args.mock_threads, os.path.join(tmp, "mock.log"),
                          mock_extra)
        relay_log = os.path.join(tmp, "relay.log")
        relay = start_relay(procs, args.relay_bin, conf, relay_url, admin_url, relay_log)
        log = LogTail(relay_log)
        rss_fresh = status_kb(relay.pid, "VmRSS")

        # Smoke: both modes answer 200 both ways before anything is measured.
        hdr = {"content-type": "application/json", "x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
        for base in (mock_url, relay_url):
            for stream in (False, True):
                code, body, h = http("POST", base + "/v1/messages", request_body(stream), hdr)
                if code != 200:
                    sys.exit(f"loadtest: smoke request to {base} (stream={stream}) got {code}: {body[:500]!r}\n"
                             + "\n".join(log.new_lines()[-30:]))
                if stream and b"message_stop" not in body:
                    sys.exit(f"loadtest: smoke stream from {base} is incomplete: {body[-300:]!r}")
        if args.oauth_row:
            code, body, h = http("POST", relay_url + "/v1/messages", request_body(False), dict(hdr, **{"x-api-key": OAUTH_KEY}))
            if code != 200:
                sys.exit(f"loadtest: smoke request through the claude-oauth account got {code}: {body[:500]!r}")
        if args.openai_rows:
            chat_hdr = {"content-type": "application/json", "authorization": "Bearer " + API_KEY}
            for model in ("gpt-5", "claude-sonnet-4-5"):
                for stream in (False, True):
                    b = json.dumps({"model": model, "max_tokens": 64, "stream": stream,
                                    "messages": [{"role": "user", "content": "hello there"}]}).encode()
                    code, body, h = http("POST", relay_url + "/v1/chat/completions", b, chat_hdr)
                    if code != 200 or (stream and b"[DONE]" not in body):
                        sys.exit(f"loadtest: smoke chat request ({model}, stream={stream}) got {code}: {body[:500]!r}")

        if args.gemini_rows:
            g_hdr = {"content-type": "application/json", "x-goog-api-key": API_KEY}
            g_body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}).encode()
            for stream in (False, True):
                code, body, h = http("POST", relay_url + gemini_path(stream, "/gemini"), g_body, g_hdr)
                if code != 200 or (stream and b"usageMetadata" not in body):
                    sys.exit(f"loadtest: smoke Gemini request (stream={stream}) got {code}: {body[:500]!r}")
                b = json.dumps({"model": "gemini-2.5-pro", "stream": stream,
                                "messages": [{"role": "user", "content": "hello there"}]}).encode()
                code, body, h = http("POST", relay_url + "/v1/chat/completions", b,
                                     {"content-type": "application/json", "authorization": "Bearer " + API_KEY})
                if code != 200 or (stream and b"[DONE]" not in body):
                    sys.exit(f"loadtest: smoke chat request (gemini, stream={stream}) got {code}: {body[:500]!r}")

        rows = []
        log_notes = collections.Counter()
        can_reset = reset_peak_rss(relay.pid)
        for stream in (False, True):
            for conc in concs:
                targets = [("direct (mock)", mock_url, mock, API_KEY, None), ("relay", relay_url, relay, API_KEY, None)]
                if args.oauth_row:
                    targets.append(("relay (claude-oauth)", relay_url, relay, OAUTH_KEY, None))
                if args.openai_rows:
                    targets += [("direct chat (mock)", mock_url, mock, API_KEY, "gpt-5"),
                                ("relay chat → openai", relay_url, relay, API_KEY, "gpt-5"),
                                ("relay chat → claude (converted)", relay_url, relay, API_KEY, "claude-sonnet-4-5")]
                if args.gemini_rows:
                    targets += [("direct gemini (mock)", mock_url, mock, API_KEY, GEMINI),
                                ("relay gemini → gemini-api", relay_url, relay, API_KEY, GEMINI),
                                ("relay chat → gemini (converted)", relay_url, relay, API_KEY, "gemini-2.5-pro")]
                for target, base, proc, key, chat_model in targets:
                    is_relay = proc is relay
                    if is_relay:
                        reset_peak_rss(relay.pid)
                        before_status = relay_statuses(admin_url)
                    t0 = cpu_ticks(proc.pid)
                    if chat_model is GEMINI:
                        path = gemini_path(stream, "/gemini" if is_relay else "")
                        r = run_wrk(base + path, conc, args.duration, stream, api_key=key, gemini=True)
                    else:
                        path = "/v1/chat/completions" if chat_model else "/v1/messages"
                        r = run_wrk(base + path, conc, args.duration, stream, api_key=key, chat_model=chat_model)
                    t1 = cpu_ticks(proc.pid)
                    row = dict(target=target, stream=stream, conc=conc, r=r,
                               cpu_us=((t1 - t0) / CLK_TCK * 1e6 / r["requests"]) if r["requests"] else None)
                    if is_relay:
                        after_status = relay_statuses(admin_url)
                        row["statuses"] = (after_status - before_status) if (after_status is not None
                                                                             and before_status is not None) else None
                        row["hwm_kb"] = status_kb(relay.pid, "VmHWM")
                        lines = summarize_log(log.new_lines())
                        row["log"] = lines
                        for l, n in lines:
                            log_notes[l] += n
                    rows.append(row)
                    err_n, err_s = errors_of(r)
                    print(f"  {target:32} stream={str(stream).lower():5} c={conc:<4} "
                          f"{r['requests'] / (r['duration_us'] / 1e6):>9.0f} req/s  p50 {fmt_ms(r['p50_us'])} ms  "
                          f"p99 {fmt_ms(r['p99_us'])} ms  errors {err_n}", file=sys.stderr, flush=True)
                    time.sleep(1)

        # Slow streams: many concurrent long-lived streams, first direct (for comparison), then
        # through the relay.
        time.sleep(1)
        slow_direct = run_wrk(mock_url + "/v1/messages", args.slow_conc, args.slow_duration, True,
                              chunk_delay_ms=args.slow_delay_ms, timeout_s=15)
        time.sleep(2)
        rss_before_slow = status_kb(relay.pid, "VmRSS")
        heap_before_slow = gauges(admin_url)
        reset_peak_rss(relay.pid)
        before_status = relay_statuses(admin_url)
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                try:
                    samples.append((status_kb(relay.pid, "VmRSS"), gauges(admin_url)))
                except OSError:
                    pass

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = cpu_ticks(relay.pid)
        slow = run_wrk(relay_url + "/v1/messages", args.slow_conc, args.slow_duration, True,
                       chunk_delay_ms=args.slow_delay_ms, timeout_s=15)
        t1 = cpu_ticks(relay.pid)
        stop.set()
        th.join()
        time.sleep(1)
        after_status = relay_statuses(admin_url)
        slow_statuses = (after_status - before_status) if (after_status is not None and before_status is not None) else None
        slow_hwm = status_kb(relay.pid, "VmHWM")
        slow_log = summarize_log(log.new_lines())
        for l, n in slow_log:
            log_notes[l] += n
        busiest = max((s[1] for s in samples if s[1].get("in_flight") is not None),
                      key=lambda g: g["in_flight"], default=None)
        max_in_flight = busiest["in_flight"] if busiest else None
        # Memory given back once the streams are over: jemalloc returns freed pages over about
        # ten seconds (its decay time).
        time.sleep(args.settle_s)
        rss_after_slow = status_kb(relay.pid, "VmRSS")
        heap_after_slow = gauges(admin_url)

        if args.failover_row:
            relay.stop()  # idle from here on; the failover row has its own relay
            time.sleep(1)
            fo_rows = failover_rows(args, tmp, mock_url, procs)
    finally:
        for p in reversed(procs):
            p.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- report ----
    def commit():
        try:
            return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip() or "?"
        except OSError:
            return "?"

    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0].split(" [")[0]
    out = []
    w = out.append
    w(f"# claude-relay load test, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    w("")
    w(f"Commit `{commit()}` (plus uncommitted changes, if any); {os.cpu_count()} CPUs; load average at the end "
      f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}. Load generator: {wrk_version}, 1 thread, keep-alive. "
      f"Relay: release build, `threads: {args.relay_threads}`, `RELAY_LOG={os.environ.get('RELAY_LOG', 'warn')}`, "
      f"embedded store. Mock: `examples/mock_upstream.rs`, {args.mock_threads} worker thread(s)"
      + (", HTTPS (the relay speaks HTTP/2 to it; wrk's direct rows HTTP/1.1 over TLS). " if args.upstream_tls
         else ", plain HTTP/1.1 (one upstream connection per request in flight). ") +
      f"{args.duration} s per row. Generator, mock and relay share the same machine.")
    w("")
    w("| target | stream | conc | req/s | p50 ms | p99 ms | errors | CPU µs/req | peak RSS MB | relay statuses |")
    w("|---|---|---:|---:|---:|---:|---|---:|---:|---|")
    for row in rows:
        r = row["r"]
        rps = r["requests"] / (r["duration_us"] / 1e6)
        err_n, err_s = errors_of(r)
        relay_row = row["target"].startswith("relay")
        cpu = f"{row['cpu_us']:.0f}" if row["cpu_us"] is not None else "–"
        if not relay_row:
            cpu = f"({cpu} mock)"
        if relay_row:
            rss, statuses = f"{row['hwm_kb'] / 1024:.1f}", fmt_statuses(row.get("statuses"))
        else:
            rss, statuses = "–", "–"
        errs = f"{err_n} ({err_s})" if err_s else f"{err_n}"
        w(f"| {row['target']} | {'yes' if row['stream'] else 'no'} | {row['conc']} | {fmt_int(round(rps))} | "
          f"{fmt_ms(r['p50_us'])} | {fmt_ms(r['p99_us'])} | {errs} | {cpu} | {rss} | {statuses} |")
    w("")
    if 1 in concs:
        w("**Added p50 latency at concurrency 1** (relay p50 − direct p50):")
        w("")
        for stream in (False, True):
            d = next(x for x in rows if x["conc"] == 1 and x["stream"] == stream and x["target"] != "relay")
            rl = next(x for x in rows if x["conc"] == 1 and x["stream"] == stream and x["target"] == "relay")
            w(f"- {'streaming' if stream else 'non-streaming'}: {rl['r']['p50_us'] / 1000:.3f} − "
              f"{d['r']['p50_us'] / 1000:.3f} = **{(rl['r']['p50_us'] - d['r']['p50_us']) / 1000:.3f} ms**")
        w("")
    err_n, err_s = errors_of(slow)
    w(f"**Slow streams**: {args.slow_conc} concurrent streams, mock sends ~13 chunks "
      f"{args.slow_delay_ms} ms apart (~{12 * args.slow_delay_ms / 1000:.1f} s per stream), {args.slow_duration} s.")
    w("")
    w("| target | streams | completed | req/s | p50 ms | p99 ms | errors | max in flight (sampled) | "
      "relay RSS before MB | relay peak RSS MB | CPU µs/req | relay statuses |")
    w("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|")
    d_err_n, d_err_s = errors_of(slow_direct)
    w(f"| direct (mock) | {args.slow_conc} | {fmt_int(slow_direct['requests'])} | "
      f"{slow_direct['requests'] / (slow_direct['duration_us'] / 1e6):.0f} | {fmt_ms(slow_direct['p50_us'])} | "
      f"{fmt_ms(slow_direct['p99_us'])} | {d_err_n}{' (' + d_err_s + ')' if d_err_s else ''} | – | – | – | – | – |")
    slow_cpu = (t1 - t0) / CLK_TCK * 1e6 / slow["requests"] if slow["requests"] else 0
    w(f"| relay | {args.slow_conc} | {fmt_int(slow['requests'])} | {slow['requests'] / (slow['duration_us'] / 1e6):.0f} | "
      f"{fmt_ms(slow['p50_us'])} | {fmt_ms(slow['p99_us'])} | {err_n}{' (' + err_s + ')' if err_s else ''} | "
      f"{max_in_flight if max_in_flight is not None else 'n/a'} | {rss_before_slow / 1024:.1f} | "
      f"{slow_hwm / 1024:.1f} | {slow_cpu:.0f} | {fmt_statuses(slow_statuses)} |")
    w("")
    w("\"completed\" counts streams wrk read to the end; the streams still open when wrk stopped are cut and "
      "not counted there, but the relay had already answered 200 for them, so its status count is higher by "
      "about the concurrency. CPU µs/req here is per completed stream (13 chunk writes each). "
      "Memory per in-flight stream ≈ (peak − before) ÷ max in flight"
      + (f" = **{(slow_hwm - rss_before_slow) / max_in_flight:.0f} KB**." if max_in_flight else "."))
    w("")
    if busiest and "allocated" in busiest and "allocated" in heap_before_slow:
        per = {k: (busiest[k] - heap_before_slow[k]) / 1024 / max_in_flight
               for k in ("allocated", "active", "resident") if k in busiest and k in heap_before_slow}
        w("The allocator's own account (`relay_allocator_bytes`), before the row and at the sample with the most "
          "streams in flight: " + ", ".join(
              f"{k} {heap_before_slow[k] / 2**20:.1f} → {busiest[k] / 2**20:.1f} MB ({per[k]:.0f} KB per stream)"
              for k in per) + ".")
        w("")
    w(f"{args.settle_s} s after the row, with no stream left: relay RSS {rss_after_slow / 1024:.1f} MB (before the row "
      f"{rss_before_slow / 1024:.1f}, peak {slow_hwm / 1024:.1f})"
      + (f"; allocated {heap_after_slow['allocated'] / 2**20:.1f} MB, resident {heap_after_slow['resident'] / 2**20:.1f} MB"
         if "allocated" in heap_after_slow and "resident" in heap_after_slow else "") + ".")
    w("")
    w(f"Relay RSS right after start: {rss_fresh / 1024:.1f} MB. Peak RSS is VmHWM, "
      + ("reset (`/proc/PID/clear_refs` = 5) before each relay row, so each row shows its own peak "
         "(memory the allocator kept from earlier rows is included)." if can_reset else
         "cumulative since start (this kernel refused the reset)."))
    w("")
    if fo_rows is not None:
        d = args.duration
        w(f"**Failover**: a second relay over three accounts of the same priority: `ok-a` (the mock above), "
          f"`ok-b` (a second normal mock) and `limited` (a mock started with `--status 429`: every request gets "
          f"429 `rate_limit_error` with `retry-after: 1`). Concurrency {args.failover_conc}, {d} s per row.")
        w("")
        w("| stream | conc | req/s | p50 ms | p99 ms | client errors | client non-2xx | relay statuses | "
          "relay_failovers_total Δ | requests to the 429 mock | per second | 429s per return | "
          "requests to ok-a / ok-b | CPU µs/req |")
        w("|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---|---:|")
        for row in fo_rows:
            r = row["r"]
            sock = sum(r[k] for k in ("connect", "read", "write", "timeout"))
            lim = row["mock_reqs"]["limited"]
            per_s = f"{lim / (r['duration_us'] / 1e6):.1f}" if lim is not None else "n/a"
            oks = " / ".join(fmt_int(row["mock_reqs"][n]) if row["mock_reqs"][n] is not None else "n/a"
                             for n in ("ok-a", "ok-b"))
            cpu = f"{row['cpu_us']:.0f}" if row["cpu_us"] is not None else "–"
            w(f"| {'yes' if row['stream'] else 'no'} | {args.failover_conc} | "
              f"{fmt_int(round(r['requests'] / (r['duration_us'] / 1e6)))} | {fmt_ms(r['p50_us'])} | "
              f"{fmt_ms(r['p99_us'])} | {sock} | {r['status']} | {fmt_statuses(row['statuses'])} | "
              f"{fmt_statuses(row['failovers'])} | {fmt_int(lim) if lim is not None else 'n/a'} | {per_s} | "
              f"{', '.join(str(b) for b in row['bursts']) or '–'} | {oks} | {cpu} |")
        w("")
        w("\"client errors\" are wrk's socket errors (connect, read, write, timeout), \"client non-2xx\" the "
          "answers that were not 2xx/3xx: both must be 0, every request the 429 account refused was moved to "
          "another account. \"requests to the 429 mock\" is what that mock answered during the row (its "
          "`/_mock/stats`); `relay_failovers_total` should count the same 429s. Each 429 takes the account out "
          "of the pool for its `retry-after` (1 s), so it comes back about once a second, and every request "
          "picked for it before its first 429 is back gets one: \"429s per return\" are the relay's "
          "`account out of the pool` log lines for it, grouped by return (lines less than 250 ms apart), in "
          "order. The scheduler picks the least used account, and after a second out of the pool the returning "
          "one is the least used by thousands of picks, so it takes every pick until its first 429 lands: a "
          "return costs about the picks of one upstream round trip, at most the concurrency.")
        others = collections.Counter()
        for row in fo_rows:
            for l, n in row["other"]:
                others[l] += n
        if others:
            w("")
            w("Other relay WARN/ERROR lines during the failover rows:")
            w("")
            w("```")
            for l, n in others.most_common(15):
                w(f"{n:>7} × {l}")
            w("```")
        w("")
    if log_notes:
        w("Relay WARN/ERROR log lines during the measured runs above the failover rows (distinct, with counts):")
        w("")
        w("```")
        for l, n in log_notes.most_common(15):
            w(f"{n:>7} × {l}")
        w("```")
    else:
        w("The relay logged no WARN/ERROR lines during the measured runs"
          + (" (the rows above the failover rows)." if fo_rows is not None else "."))
    w("")
    text = "\n".join(out)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"\n(written to {os.path.relpath(args.out)})", file=sys.stderr)


if __name__ == "__main__":
    main()
