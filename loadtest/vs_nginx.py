#!/usr/bin/env python3
"""modelgate vs nginx on the same machine, same upstream, same load.

Starts, on 127.0.0.1 ephemeral ports: the demo model (the one upstream), and
per run a fresh proxy process of one of three kinds:

  nginx   real nginx from conf/nginx.conf: key check (map -> 401), credential
          swap, unbuffered proxying (SSE passes through), upstream keep-alive,
          no access log; worker_processes = --threads
  pass    modelgate passthrough: identity + credential swap, no masking
          (mask: {response: none}), no audit; server.threads = --threads
  full    modelgate with identity, five policy rules (injection screen,
          prompt regex, model and path globs, max_tokens; none holds for the
          load's request, so all are evaluated), a request-rate limit (local,
          never reached), streaming masking of every entity
          (mask: {response: all}) and the audit trail to a file sink.

With --floors, two more (loadtest/floor/src/main.rs), each the least a
Pingora program does to do what nginx's configuration does (key check ->
401, credential swap, upstream keep-alive), to show how much of a proxy's
cost is Pingora's and how much the gateway's:

  pingora crates.io Pingora 0.9.1 unpatched, Pingora's defaults except
          nginx's upstream timeouts: the "minimal Pingora proxy" of issue 8
          (built from loadtest/floor/Cargo.toml into target/floor)
  floor   the same program on modelgate's patched Pingora (vendor/) with
          modelgate's settings (no header-case map, no listener read buffer),
          reading the request body whole as modelgate does (the main crate's
          example pingora_floor); both with nginx's upstream timeouts

Each proxy is checked first (wrong key -> 401, the upstream sees the swapped
credential, full masks the canned answer's PII and the others do not), warmed
up, then driven with wrk (loadtest/wrk/request.lua). Rounds rotate the order
(round 1: nginx, pass, full; round 2: pass, full, nginx; ...; with --floors
the five kinds rotate the same way, so 3 rounds use 3 of the 5 orders). Per run:
requests/s, p50/p99/p99.9 latency (wrk), CPU time per request of the proxy
process(es) (/proc/PID/stat utime+stime; nginx: master + workers), peak RSS
(VmHWM; nginx: sum of workers), errors. Tables show medians over rounds and,
for modelgate, the median over rounds of its ratio to the nginx run of the
same round.

Workloads:
  json  small non-streaming answers (the demo model's canned answer, no delay)
  sse   streams of 200 token events, no delay; events/s uses the event count
        of one probed stream per proxy, and a sequential probe measures time
        to first token (first `data:` event with non-empty delta.content)
        while wrk runs
  rate  json at a fixed rate (--rate, default 5,000 req/s), open loop, with
        oha instead of wrk (installed into loadtest/.tools with cargo when
        missing): every request is due at its time whether or not earlier
        ones were answered, and its latency counts from when it was due
        (--latency-correction), so the latency a proxy adds is measured at a
        load all three sustain, not at saturation, where wrk's closed loop
        makes latency mostly the queue behind a slower proxy's 64 connections
  https      json over HTTPS on kept-alive connections (TLS cost per request)
  handshake  json over HTTPS, every request on a new connection (wrk sends
             `Connection: close`): connections/s = full TLS handshakes/s

The HTTPS workloads (not run by default) give each proxy a second, HTTPS
listener with one certificate made for the whole run (ECDSA P-256,
self-signed, `openssl req`): nginx's from conf/nginx-tls.conf, modelgate's a
`listeners:` entry with its default TLS settings. Neither resumes sessions
(both run with OPENSSL_CONF=conf/openssl-no-tickets.cnf: no TLS 1.3 session
tickets; nginx also keeps no session cache); before each run a Python client
checks over HTTPS that a chat request answers 200 and that a second
connection offering the first one's session gets a full handshake.

--sweep N1,N2,...: per level N and proxy, N slow SSE streams held open at
once (200 events, 100 ms apart: ~20 s each) with wrk -c N (request.lua's
sweep mode: one request per connection); once every stream is open (counted
in /proc/net/tcp), the proxy's RSS and CPU; reports MB per 1,000 open
streams ((RSS open - RSS idle) / N * 1000), whether every stream completed,
and how long streams took. A level that needs more file descriptors than
RLIMIT_NOFILE allows (~2 per stream in one proxy process) is skipped and
counts as a failure.

Writes loadtest/results/latest.md and PNG plots there. Exits 1 if anything
failed to start, a check failed, a run had errors, or a sweep level could
not run or did not complete. Loopback only; every run is bounded in time.

Usage: loadtest/vs_nginx.py [--rounds 3] [--seconds 10] [--connections 64]
          [--threads 1] [--workloads json,sse,rate,https,handshake] [--rate 5000]
          [--sweep 1,1000,10000] [--quick]
"""
import argparse
import atexit
import collections
import datetime
import hashlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

UPSTREAM_SECRET = "upstream-secret"
TEMPLATE = os.path.join(h.ROOT, "conf", "nginx.conf")
TLS_TEMPLATE = os.path.join(h.ROOT, "conf", "nginx-tls.conf")
NO_TICKETS = os.path.join(h.ROOT, "conf", "openssl-no-tickets.cnf")
RESULTS = os.path.join(h.ROOT, "loadtest", "results")
KINDS = ["nginx", "pass", "full"]
FLOORS = ["pingora", "floor"]  # --floors
LABEL = {"nginx": "nginx", "pass": "modelgate passthrough", "full": "modelgate full",
         "pingora": "plain Pingora 0.9.1", "floor": "floor: modelgate's Pingora"}
# The canned answer's PII: present unless the proxy masks responses.
PII = "jane.doe@example.com"
WORKLOADS = {
    "json": dict(stream=False, events=0, delay_ms=0),
    "sse": dict(stream=True, events=200, delay_ms=0),
    "https": dict(stream=False, events=0, delay_ms=0, https=True),
    "handshake": dict(stream=False, events=0, delay_ms=0, https=True, env={"MG_CLOSE": "true"}),
    "rate": dict(stream=False, events=0, delay_ms=0, fixed_rate=True),
}
TITLE = {
    "rate": "rate: json at a fixed rate, open loop (oha)",
    "https": "https: json over TLS, kept-alive connections",
    "handshake": "handshake: json over TLS, a new connection (full handshake) per request",
}

failures = []


def fail(msg):
    print(f"FAILED: {msg}", file=sys.stderr, flush=True)
    failures.append(msg)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def log_digest(path, top=6):
    """A log's distinct messages (timestamps, pids, ids and ports blanked out),
    most frequent first."""
    lines = collections.Counter()
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                # modelgate: "[2026-...Z WARN  target] msg"; nginx: "2026/.. ..:..:.. [warn] 12#12: *3 msg"
                line = re.sub(r"^\[[^]]*\] ?|^\d{4}/\d\d/\d\d \S+ (\[\w+\]) \d+#\d+: (\*\d+ )?", r"\1 ", line).strip()
                lines[re.sub(r"\b[0-9a-f]{16,}\b|(?<=:)\d{2,5}\b", "…", line)[:300]] += 1
    except OSError:
        pass
    return "\n".join(f"{n:7} × {msg}" for msg, n in lines.most_common(top)) + "\n"


# --------------------------------------------------------------------------
# The proxies


def nofile_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit; the children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1048576 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


_nginxes = []


def _stop_nginxes():
    # Runs before harness's own atexit clean-up (atexit is LIFO), which would
    # SIGKILL only the master and leave its workers listening.
    for n in _nginxes:
        n.stop()


class Nginx:
    """nginx from the conf/nginx.conf template, as a non-daemon child."""

    binary = shutil.which("nginx") or "/usr/sbin/nginx"

    def __init__(self, upstream_port, workers, worker_connections=65536, tls=None,
                 binary=None, single=False, timeout=20):
        """`single`: one process, no master (`master_process off`), for
        counting its instructions under valgrind (loadtest/instructions.py)."""
        self.kind = "nginx"
        self.dir = tempfile.mkdtemp(prefix="nginx-load-")
        os.chmod(self.dir, 0o755)  # workers may run as another user (root -> nobody)
        self.port = h.free_port()
        self.tls_port = tls and h.free_port()
        with open(TEMPLATE) as f:
            conf = f.read()
        values = {
            "WORKERS": workers, "NOFILE": nofile_limit(), "DIR": self.dir,
            "WORKER_CONNECTIONS": worker_connections, "CLIENT_KEY": h.CLIENT_KEY,
            "UPSTREAM_PORT": upstream_port, "PORT": self.port, "UPSTREAM_SECRET": UPSTREAM_SECRET,
        }
        if tls:
            with open(TLS_TEMPLATE) as f:
                conf = conf.replace("{{TLS}}", f.read())
            values.update(TLS_PORT=self.tls_port, CERT=tls.cert, KEY=tls.key)
        else:
            conf = conf.replace("{{TLS}}", "")
        for k, v in values.items():
            conf = conf.replace("{{" + k + "}}", str(v))
        if "{{" in conf:
            sys.exit(f"{TEMPLATE}: placeholder left unfilled: {conf[conf.index('{{'):][:40]}")
        self.conf = os.path.join(self.dir, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.workers = []
        _nginxes.append(self)
        self.proc = h.spawn([binary or self.binary, "-p", self.dir + "/", "-c", self.conf,
                             "-e", os.path.join(self.dir, "error.log"),
                             "-g", "daemon off;" + (" master_process off;" if single else "")],
                            os.path.join(self.dir, "stdout.log"), env=tls and {"OPENSSL_CONF": NO_TICKETS})
        end = time.time() + timeout
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"nginx exited with {self.proc.returncode} at start:\n"
                         f"{tail(os.path.join(self.dir, 'stdout.log'))}{tail(os.path.join(self.dir, 'error.log'))}")
            self.workers = [] if single else h.child_pids(self.proc.pid)
            if (single or len(self.workers) >= workers) and ready(self.port):
                break
            if time.time() > end:
                sys.exit(f"nginx not ready after {timeout} s:\n{tail(os.path.join(self.dir, 'error.log'))}")
            time.sleep(0.05)

    def cpu(self):
        return sum(h.cpu_seconds(p) for p in [self.proc.pid, *self.workers])

    def peak_rss(self):
        return sum(h.peak_rss_mb(p) for p in self.workers or [self.proc.pid])

    def rss(self):
        return sum(h.rss_mb(p) for p in self.workers or [self.proc.pid])

    def error_log(self):
        return log_digest(os.path.join(self.dir, "error.log"))

    def stop(self):
        h.stop(self.proc, timeout=10)  # SIGTERM: the master stops its workers
        for w in self.workers:
            try:
                os.kill(w, signal.SIGKILL)  # only if one outlived its master
            except ProcessLookupError:
                pass
        if self in _nginxes:
            _nginxes.remove(self)
            shutil.rmtree(self.dir, ignore_errors=True)


class OneProcess:
    """CPU time and memory of a proxy that is one process, `self.proc`."""

    def cpu(self):
        return h.cpu_seconds(self.proc.pid)

    def peak_rss(self):
        return h.peak_rss_mb(self.proc.pid)

    def rss(self):
        return h.rss_mb(self.proc.pid)


class Gate(OneProcess):
    """modelgate in `pass` or `full` mode (see the module docstring)."""

    def __init__(self, binary, kind, upstream_port, threads, tls=None):
        self.kind = kind
        self.dir = tempfile.mkdtemp(prefix="mg-load-")
        body = (
            f"upstreams:\n  model:\n    hosts: [\"127.0.0.1:{upstream_port}\"]\n"
            f"    credential: \"Bearer {UPSTREAM_SECRET}\"\n"
            f"routes:\n  - {{path_prefix: \"/\", upstream: model}}\n"
        )
        self.tls_port, env = None, None
        if tls:
            # TLS settings left at their defaults; HTTP/1.1 only and no session
            # tickets (NO_TICKETS), like nginx (see conf/nginx-tls.conf).
            self.tls_port, env = h.free_port(), {"OPENSSL_CONF": NO_TICKETS}
            body += (f"listeners:\n  - name: https\n    address: \"127.0.0.1:{self.tls_port}\"\n"
                     f"    tls: {{certificates: [{{cert: \"{tls.cert}\", key: \"{tls.key}\"}}], "
                     "http2: false}\n")
        if kind == "pass":
            body += "policies:\n  default: {mask: {response: none}}\n"
        else:
            # Audit defaults on purpose (what a user gets): each call in flight holds
            # one of audit.queue_capacity (8192) queue slots for its record, so more
            # concurrent streams than that are refused (503, fail_closed).
            body += (
                "policies:\n  default:\n    mask: {response: all}\n    rules:\n"
                "      - {name: injection, when: {prompt_injection: true}, action: deny}\n"
                "      - {name: falcon, when: {prompt_matches: '(?i)project\\s+falcon'}, action: deny}\n"
                "      - {name: gpt, when: {models: \"gpt-*\"}, action: deny}\n"
                "      - {name: embeddings, when: {paths: \"/v1/embeddings\"}, action: deny}\n"
                "      - {name: long, when: {max_tokens_over: 8000}, action: require_approval}\n"
                "approval: {approver_groups: [load]}\n"
                "rate_limits:\n  default: {requests_per_second: 1000000, burst: 1000000}\n"
                f"audit:\n  sinks:\n    - {{kind: file, path: \"{self.dir}/audit.jsonl\"}}\n"
            )
        try:
            self.mg = h.Modelgate(binary, body, threads=threads, workdir=self.dir, env=env)
        except SystemExit:
            log(tail(os.path.join(self.dir, "gateway.log")))
            raise
        self.port, self.proc = self.mg.port, self.mg.proc
        self.workers = []

    def error_log(self):
        """The gateway log's distinct messages, most frequent first, and (full
        mode) the audit `call` records by status and decision: refusals (503)
        show only there."""
        out = [log_digest(os.path.join(self.dir, "gateway.log"))]
        calls = collections.Counter()
        try:
            with open(os.path.join(self.dir, "audit.jsonl"), errors="replace") as f:
                for line in f:
                    if '"kind":"call"' in line:
                        st = re.search(r'"status":(\d+)', line)
                        why = re.search(r'"decision":\{"action":"(\w+)"(?:,"reason":"([^"]*)")?', line)
                        calls[(st and st[1], why and why[1], why and why[2])] += 1
        except OSError:
            pass
        if calls:
            out.append("audit call records (status, action, reason): " + ", ".join(
                f"{k}: {n}" for k, n in calls.most_common()))
        return "\n".join(out) + "\n"

    def stop(self):
        self.mg.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Floor(OneProcess):
    """A floor proxy (`pingora` or `floor`, see the module docstring)."""

    def __init__(self, binary, kind, upstream_port, threads, timeout=20):
        self.kind, self.port, self.tls_port = kind, h.free_port(), None
        self.dir = tempfile.mkdtemp(prefix="floor-load-")
        self.log = os.path.join(self.dir, "floor.log")
        self.proc = h.spawn([binary, f"127.0.0.1:{self.port}", f"127.0.0.1:{upstream_port}",
                             h.CLIENT_KEY, f"Bearer {UPSTREAM_SECRET}", str(threads)], self.log)
        end = time.time() + timeout
        while not ready(self.port):
            if self.proc.poll() is not None or time.time() > end:
                sys.exit(f"{LABEL[kind]} did not start:\n{tail(self.log)}")
            time.sleep(0.05)

    def error_log(self):
        return log_digest(self.log)

    def stop(self):
        h.stop(self.proc, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def build_floors():
    """Builds both floors (cargo does nothing when they are fresh) and
    returns {kind: binary}."""
    target = os.path.join(h.ROOT, "target")
    cmds = {
        "floor": (["cargo", "build", "--release", "--example", "pingora_floor"],
                  os.path.join(target, "release", "examples", "pingora_floor")),
        "pingora": (["cargo", "build", "--release", "--locked", "--manifest-path",
                     os.path.join(h.ROOT, "loadtest", "floor", "Cargo.toml"),
                     "--target-dir", os.path.join(target, "floor")],
                    os.path.join(target, "floor", "release", "pingora-floor")),
    }
    out = {}
    for kind, (cmd, binary) in cmds.items():
        log(f"building {LABEL[kind]}: {' '.join(cmd)}")
        if subprocess.run(cmd, cwd=h.ROOT).returncode != 0:
            sys.exit(f"building {LABEL[kind]} failed")
        out[kind] = binary
    return out


def proxy(kind, binary, upstream_port, threads, tls=None, timeout=20, single=False, **nginx):
    """A fresh proxy of `kind` run from `binary` (nginx: None for the system's);
    with `tls` (a TestCert), also listening for HTTPS. `timeout` bounds nginx's
    and a floor's start (modelgate's is harness.wait_http's); `single` and the
    rest are Nginx's."""
    if kind == "nginx":
        return Nginx(upstream_port, threads, tls=tls, binary=binary, single=single,
                     timeout=timeout, **nginx)
    if kind in FLOORS:
        return Floor(binary, kind, upstream_port, threads, timeout)
    return Gate(binary, kind, upstream_port, threads, tls)


def start(kind, args, model, tls=None):
    """A fresh proxy of `kind` for one run of the load test."""
    binary = None if kind == "nginx" else args.floor_bins[kind] if kind in FLOORS else args.bin
    return proxy(kind, binary, model.port, args.threads, tls,
                 worker_connections=args.nginx_worker_connections)


class TestCert:
    """One self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost,
    made with the `openssl` CLI into a directory removed at exit; every
    proxy of the run serves it."""

    def __init__(self):
        d = tempfile.mkdtemp(prefix="tls-load-")
        atexit.register(shutil.rmtree, d, True)
        self.cert, self.key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-keyout", self.key, "-out", self.cert, "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=30)


# --------------------------------------------------------------------------
# Requests


def chat_body(stream):
    return json.dumps({"model": "demo-model", "stream": stream,
                       "messages": [{"role": "user", "content": "How do I reach support?"}]})


def post(port, stream=False, key=h.CLIENT_KEY, events=0, delay_ms=0, timeout=30):
    """One chat request. Returns (status, body) and, for streams, reads the
    SSE events as they come: {"ttft_ms", "total_ms", "events", "done", "text"}."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}",
               "x-demo-delay-ms": str(delay_ms)}
    if events:
        headers["x-demo-events"] = str(events)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        t0 = time.perf_counter()
        c.request("POST", "/v1/chat/completions", chat_body(stream), headers)
        r = c.getresponse()
        if r.status != 200 or not stream:
            return r.status, r.read()
        ttft, n, done, text, buf = None, 0, False, [], b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            now = time.perf_counter()
            buf = (buf + chunk).replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                for line in ev.split(b"\n"):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    n += 1
                    choices = json.loads(data).get("choices") or [{}]
                    content = (choices[0].get("delta") or {}).get("content")
                    if content:
                        text.append(content)
                        if ttft is None:
                            ttft = (now - t0) * 1e3
        return 200, {"ttft_ms": ttft, "total_ms": (time.perf_counter() - t0) * 1e3,
                     "events": n, "done": done, "text": "".join(text)}
    finally:
        c.close()


def ready(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/health", headers={"Authorization": f"Bearer {h.CLIENT_KEY}"})
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


def upstream_saw(model_port):
    """The headers of the last request the demo model received."""
    with urllib.request.urlopen(f"http://127.0.0.1:{model_port}/__requests", timeout=5) as r:
        log_ = json.loads(r.read())
    return log_[-1]["headers"] if log_ else {}


def preflight(p, model):
    """Checks the proxy does what it is meant to before it is measured.
    Returns the number of SSE data events (without [DONE]) of a 200-event stream."""
    k = LABEL[p.kind]
    status, _ = post(p.port, key="wrong-key")
    if status != 401:
        fail(f"{k}: wrong client key answered {status}, expected 401")
    status, body = post(p.port)
    if status != 200:
        fail(f"{k}: chat request answered {status}: {body[:200]!r}")
        return 0
    text = json.loads(body)["choices"][0]["message"]["content"]
    if (PII in text) == (p.kind == "full"):
        fail(f"{k}: masking is {'off' if PII in text else 'on'}, expected the opposite: {text!r}")
    auth = upstream_saw(model.port).get("authorization")
    if auth != f"Bearer {UPSTREAM_SECRET}":
        fail(f"{k}: upstream saw Authorization {auth!r}, expected the swapped credential")
    status, s = post(p.port, stream=True, events=200)
    if status != 200 or not s["done"] or s["ttft_ms"] is None or s["text"] != "tok " * 200:
        fail(f"{k}: 200-event stream came back wrong: {status} {str(s)[:300]}")
        return 0
    return s["events"]


def tls_check(p, tls):
    """Two chat requests over the proxy's HTTPS port, each on a new
    connection, the second offering the first one's session. Both must answer
    200 and neither may be resumed, so that every connection of the load is a
    full handshake. Returns what the client negotiated, for the report."""
    k = LABEL[p.kind]
    ctx = ssl.create_default_context(cafile=tls.cert)
    body = chat_body(False).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {h.CLIENT_KEY}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    session = None
    for attempt in (1, 2):
        with socket.create_connection(("127.0.0.1", p.tls_port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as s:
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            if not answer.startswith(b"HTTP/1.1 200 "):
                fail(f"{k}: chat request over HTTPS answered {answer[:200]!r}")
            if s.session_reused:
                fail(f"{k}: HTTPS connection {attempt} resumed the session of the one before; "
                     "the handshake workload needs full handshakes")
            session = s.session  # read after the answer: TLS 1.3 tickets come after the handshake
            seen = (f"{s.version()} {s.cipher()[0]}, session ticket "
                    f"{'issued (not resumed)' if session.has_ticket else 'none'}")
    return seen


# --------------------------------------------------------------------------
# Throughput runs


def errors_of(res):
    return sum(res[k] for k in ("connect_errors", "read_errors", "write_errors",
                                "status_errors", "timeouts"))


def probe_loop(port, count, span_s, out):
    """`count` sequential 200-event streams spread over `span_s` seconds."""
    t0 = time.monotonic() + 0.5
    for i in range(count):
        delay = t0 + i * span_s / count - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            status, s = post(port, stream=True, events=200, timeout=30)
            if status == 200 and s["ttft_ms"] is not None and s["done"]:
                out["ttft"].append(s["ttft_ms"])
            else:
                out["errors"].append(f"{status} {str(s)[:200]}")
        except Exception as e:  # noqa: BLE001 -- counted as a probe error
            out["errors"].append(repr(e))


def children_cpu():
    """CPU seconds of this process's reaped children (wrk, once it is done)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def one_run(kind, wl, args, model, rnd, tls):
    shape = WORKLOADS[wl]
    p = start(kind, args, model, tls if shape.get("https") else None)
    try:
        events = preflight(p, model)
        port, tls_seen = p.port, None
        if shape.get("https"):
            port, tls_seen = p.tls_port, tls_check(p, tls)
        load = {k: v for k, v in shape.items() if k != "fixed_rate"}
        h.wrk(port, args.warmup, args.connections, threads=args.wrk_threads, **load)
        time.sleep(0.3)
        probe = {"ttft": [], "errors": []}
        t = None
        if wl == "sse":
            span = max(args.seconds - 1.5, 0.5)
            t = threading.Thread(target=probe_loop, args=(p.port, args.probes, span, probe))
        cpu0, mcpu0, wcpu0 = p.cpu(), h.cpu_seconds(model.proc.pid), children_cpu()
        if t:
            t.start()
        if shape.get("fixed_rate"):
            res = h.oha_fixed_rate(port, args.seconds, args.rate, args.connections, chat_body(False))
        else:
            res = h.wrk(port, args.seconds, args.connections, threads=args.wrk_threads, **load)
        cpu, mcpu = p.cpu() - cpu0, h.cpu_seconds(model.proc.pid) - mcpu0
        wcpu = children_cpu() - wcpu0  # wrk or oha, the one child reaped meanwhile
        if t:
            t.join()
        peak = p.peak_rss()
        alive = p.proc.poll() is None
    finally:
        errlog = p.error_log()
        p.stop()
    n = max(res["requests"], 1)
    row = {
        "kind": kind, "round": rnd,
        "rps": res["requests"] / (res["duration_us"] / 1e6),
        "p50": res["p50"] / 1e3, "p99": res["p99"] / 1e3, "p999": res["p999"] / 1e3,
        "cpu_us": cpu / n * 1e6,
        "cpu_cores": cpu / (res["duration_us"] / 1e6),
        "model_cores": mcpu / (res["duration_us"] / 1e6),
        "client_cores": wcpu / (res["duration_us"] / 1e6),
        "peak_mb": peak,
        "errors": errors_of(res) + len(probe["errors"]),
        "events_per_stream": events,
    }
    if wl == "sse":
        row["eps"] = row["rps"] * events
        row["ttft"] = h.median(probe["ttft"]) if probe["ttft"] else float("nan")
    if tls_seen:
        row["tls"] = tls_seen
    if shape.get("fixed_rate"):
        # Answered at the offered rate: below it, the proxy fell behind and
        # its latencies are a growing queue, not what it adds.
        row["kept_up"] = row["rps"] >= 0.97 * args.rate
    log(f"  round {rnd} {wl:4} {LABEL[kind]:26} {row['rps']:9.0f} req/s  p99 {row['p99']:7.2f} ms  "
        f"{row['cpu_us']:7.1f} us CPU/req  {row['peak_mb']:6.1f} MB  upstream {row['model_cores']:.2f} cores  "
        f"errors {row['errors']}"
        + (f"  TTFT {row['ttft']:.2f} ms" if wl == "sse" else "")
        + ("" if row.get("kept_up", True) else f"  BEHIND the offered {args.rate} req/s"))
    if row["errors"]:
        fail(f"{wl} round {rnd} {LABEL[kind]}: {errors_of(res)} {'oha' if shape.get('fixed_rate') else 'wrk'} errors {res}, "
             f"probe errors {probe['errors'][:3]}; {LABEL[kind]} log ends:\n{errlog[-1500:]}")
    if not alive:
        fail(f"{wl} round {rnd} {LABEL[kind]}: the proxy died during the run")
    return row


def summarize(rows):
    """Medians per kind; ratios to nginx are per round, then the median."""
    by = {k: [r for r in rows if r["kind"] == k] for k in KINDS}
    nginx = {r["round"]: r for r in by["nginx"]}
    out = {}
    for k, rs in by.items():
        if not rs:
            continue
        s = {m: h.median([r[m] for r in rs]) for m in rs[0] if m not in ("kind", "round", "tls", "kept_up")}
        if "kept_up" in rs[0]:
            s["kept_up"] = sum(r["kept_up"] for r in rs)
        s["errors"] = sum(r["errors"] for r in rs)
        if "tls" in rs[0]:
            s["tls"] = "; ".join(sorted({r["tls"] for r in rs}))
        pairs = [(r, nginx[r["round"]]) for r in rs if r["round"] in nginx]
        if pairs:
            s["rps_ratio"] = h.median([r["rps"] / n["rps"] for r, n in pairs])
            s["cpu_ratio"] = h.median([r["cpu_us"] / n["cpu_us"] for r, n in pairs])
            s["p99_added"] = h.median([r["p99"] - n["p99"] for r, n in pairs])
            s["p50_added"] = h.median([r["p50"] - n["p50"] for r, n in pairs])
            if "ttft" in s:
                s["ttft_added"] = h.median([r["ttft"] - n["ttft"] for r, n in pairs])
        out[k] = s
    return out


def table(wl, summary, rounds):
    sse, https = wl == "sse", WORKLOADS[wl].get("https", False)
    fixed = WORKLOADS[wl].get("fixed_rate", False)
    per = "handshake" if wl == "handshake" else "req"
    rate = "handshakes/s" if wl == "handshake" else "req/s"
    head = ["proxy", rate] + (["events/s"] if sse else []) + [
        "p50 ms", "p99 ms", "p99.9 ms"] + (["TTFT p50 ms"] if sse else []) + [
        f"CPU µs/{per}", "CPU cores", "upstream CPU cores"] + (["wrk CPU cores"] if https else []) + [
        "peak RSS MB", "errors",
        f"{rate} vs nginx", f"CPU/{per} vs nginx"] + (["p50 added ms"] if fixed else []) + [
        "p99 added ms"] + (["TTFT added ms"] if sse else []) + (["rounds at the rate"] if fixed else [])
    lines = [f"### {TITLE.get(wl, wl)}: median of {rounds} round(s)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in KINDS:
        s = summary.get(k)
        if not s:
            continue
        cells = [LABEL[k], f"{s['rps']:,.0f}"] + ([f"{s['eps']:,.0f}"] if sse else []) + [
            f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['p999']:.2f}"] + (
            [f"{s['ttft']:.2f}"] if sse else []) + [
            f"{s['cpu_us']:.1f}", f"{s['cpu_cores']:.2f}", f"{s['model_cores']:.2f}"] + (
            [f"{s['client_cores']:.2f}"] if https else []) + [f"{s['peak_mb']:.1f}", str(s["errors"])]
        extra = int(sse) + int(fixed)
        if k == "nginx" or "rps_ratio" not in s:
            cells += ["1", "1", "0"] if k == "nginx" else ["-", "-", "-"]
            cells += (["0"] if k == "nginx" else ["-"]) * extra
        else:
            cells += [f"{s['rps_ratio']:.2f}×", f"{s['cpu_ratio']:.2f}×"]
            cells += [f"{s['p50_added']:+.2f}"] if fixed else []
            cells += [f"{s['p99_added']:+.2f}"]
            cells += [f"{s['ttft_added']:+.2f}"] if sse else []
        if fixed:
            cells.append(f"{s['kept_up']} of {rounds}")
        lines.append("| " + " | ".join(cells) + " |")
    if sse:
        ev = {LABEL[k]: s["events_per_stream"] for k, s in summary.items()}
        lines += ["", f"SSE data events per stream (without `[DONE]`), counted once per run: {ev}. "
                  f"TTFT: median of {summary_probes} sequential probe streams per run while wrk runs; wrk "
                  "saturates the machine, so TTFT includes queueing at whichever process is the "
                  "bottleneck (often the demo model): a proxy that slows the upstream down can show "
                  "a lower TTFT."]
    if any("tls" in s for s in summary.values()):
        seen = "; ".join(f"{LABEL[k]}: {s['tls']}" for k, s in summary.items())
        lines += ["", "Both proxies serve one self-signed ECDSA P-256 certificate on an HTTPS listener: "
                  "nginx conf/nginx-tls.conf, modelgate `listeners:` with its default TLS settings and "
                  "`http2: false`. No session resumption on either: both run with "
                  "OPENSSL_CONF=conf/openssl-no-tickets.cnf (no TLS 1.3 session tickets), nginx "
                  "also with `ssl_session_cache off` and `ssl_session_tickets off`; checked before "
                  "every run by a second connection offering the first one's session. What that "
                  f"Python client negotiated: {seen}."]
    if fixed:
        lines += ["", f"oha -q {rate_offered} --latency-correction -c {connections_used} (open loop): every "
                  "proxy gets the same offered rate, so req/s vs nginx is near 1 when each keeps up, and "
                  "the latencies are what each adds at that load, counted from when each request was due. "
                  "Rounds at the rate: rounds answering at least 97 % of the offered rate; in the others "
                  "the proxy fell behind and its latency is a queue."]
    if wl == "handshake":
        lines += ["", "wrk sends `Connection: close`: the proxy closes each connection after its answer "
                  "and wrk opens a new one, so every request costs a TCP connect and a full TLS "
                  "handshake, and CPU µs/handshake is the proxy's whole cost of one such call. "
                  "wrk's latency starts at the request's first byte: it leaves out connect and handshake. "
                  "wrk's own handshakes cost it about as much CPU as the proxy's: when wrk CPU cores is "
                  "near its thread count (--wrk-threads), wrk limits handshakes/s, and CPU/handshake is "
                  "the comparison."]
    return "\n".join(lines)


summary_probes = 0
rate_offered = 0
connections_used = 0


# --------------------------------------------------------------------------
# Concurrency sweep


def peers(port):
    """Remote ports of the established TCP sockets whose local port is `port`
    (the server side of connections to `port`)."""
    suffix = f":{port:04X}"
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split(None, 4)
            if parts[3] == "01" and parts[1].endswith(suffix):
                out.add(int(parts[2].rsplit(":", 1)[1], 16))
    return out


def established(port):
    return len(peers(port))


def sweep_level(kind, n, args, model):
    """N slow streams open at once through a fresh proxy of `kind`.

    wrk (C) holds the N connections rather than a Python client: 10,000
    streams × 10 events/s would make a Python reader compete with the proxies
    for the CPUs. request.lua's sweep mode makes every connection send one
    request (starts spread over a ramp, so the proxy's N upstream connects do
    not overflow the demo model's accept queue, somaxconn) and then park, so
    wrk's request count is exactly the streams that finished however long they
    take. Streams count as open once N sockets are established on the proxy's
    port and N on the demo model's (the proxy opens upstream connections for
    forwarded requests only and reuses idle ones first). `Connection: close`
    makes a finished stream's socket close: once every socket open at that
    point is gone, wrk is stopped (SIGINT: it prints its summary)."""
    stream_s = args.sweep_events * args.sweep_delay_ms / 1000
    ramp_s = n / args.sweep_ramp
    bound = int(ramp_s + 3 * stream_s + 15)  # streams slowed down by a busy CPU get that long
    row = {"kind": kind, "n": n}
    p = start(kind, args, model)
    alive, wrkp = False, None
    try:
        preflight(p, model)
        h.wrk(p.port, 1, 16, stream=True, events=20, delay_ms=0)  # warm-up
        time.sleep(1)
        row["rss_idle"] = p.rss()
        t0 = time.monotonic()
        wrkp = h.wrk_start(p.port, bound, n, threads=args.wrk_threads, stream=True,
                           events=args.sweep_events, delay_ms=args.sweep_delay_ms, timeout=bound + 30,
                           env={"MG_STREAMS": str(n // args.wrk_threads),
                                "MG_RAMP_MS": str(int(ramp_s * 1000)), "MG_CLOSE": "true"})
        deadline = t0 + max(ramp_s + 5, 0.6 * stream_s)
        while True:
            clients, upstream = peers(p.port), established(model.port)
            if (len(clients) >= n and upstream >= n) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        row["open_s"] = time.monotonic() - t0
        row["clients"], row["upstream"] = len(clients), upstream
        row["opened"] = len(clients) >= n and upstream >= n
        time.sleep(1)  # the first events flow on every stream
        cpu0, mcpu0, w0 = p.cpu(), h.cpu_seconds(model.proc.pid), time.monotonic()
        time.sleep(args.sweep_window)
        w = time.monotonic() - w0
        row["cpu_pct"] = (p.cpu() - cpu0) / w * 100
        row["model_cpu_pct"] = (h.cpu_seconds(model.proc.pid) - mcpu0) / w * 100
        row["rss_open"] = p.rss()
        while time.monotonic() < t0 + bound and wrkp.poll() is None:
            if not clients & peers(p.port):
                break
            time.sleep(0.5)
        row["ended_s"] = time.monotonic() - t0
        alive = p.proc.poll() is None
        wrkp.send_signal(signal.SIGINT)
        res = h.wrk_summary(wrkp)
    finally:
        if wrkp and wrkp.poll() is None:
            wrkp.kill()
            wrkp.wait()
        errlog = p.error_log()
        p.stop()
    row["completed"] = res["requests"] - res["status_errors"]
    row["errors"] = errors_of(res)
    row["stream_p50"], row["stream_max"] = res["p50"] / 1e6, res["max"] / 1e6
    row["mb_per_1k"] = (row["rss_open"] - row["rss_idle"]) / n * 1000
    row["ok"] = row["opened"] and row["completed"] == n and row["errors"] == 0 and alive
    log(f"  sweep {n:6} {LABEL[kind]:22} open {row['clients']}/{row['upstream']} in "
        f"{row['open_s']:.1f} s  RSS {row['rss_idle']:.1f} -> {row['rss_open']:.1f} MB  "
        f"({row['mb_per_1k']:.2f} MB/1k)  CPU {row['cpu_pct']:.0f}%  "
        f"completed {row['completed']}/{n}  errors {row['errors']}  "
        f"stream {row['stream_p50']:.1f}/{row['stream_max']:.1f} s")
    if not row["ok"]:
        fail(f"sweep {n} {LABEL[kind]}: opened={row['opened']} ({row['clients']} client / "
             f"{row['upstream']} upstream sockets), completed {row['completed']}/{n}, "
             f"wrk {res}, alive={alive}; {LABEL[kind]} log ends:\n{errlog[-1500:]}")
    return row


def fd_budget_problem(n):
    """Why N open streams cannot work here, or None."""
    limit = nofile_limit()
    # One proxy process holds N client + N upstream sockets (modelgate always
    # runs as one process; an nginx worker may get all of them).
    if 2 * n + 256 > limit:
        return (f"{n} streams need ~{2 * n + 256} fds in one proxy process; RLIMIT_NOFILE is "
                f"{limit} (hard limit; raising it needs root with CAP_SYS_RESOURCE, e.g. "
                f"`docker run --ulimit nofile=1048576`)")
    lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    if n > hi - lo - 1000:
        return f"{n} streams need {n} ephemeral ports per destination; the range has {hi - lo + 1}"
    return None


def sweep_table(rows):
    head = ["open streams", "proxy", "all open", "open after s", "RSS idle MB", "RSS open MB",
            "MB per 1k streams", "CPU % (1 core)", "demo model CPU %", "completed", "errors",
            "stream s p50 / max"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n']:,} | {LABEL[r['kind']]} | skipped: {r['skipped']} |" + " |" * 9)
            continue
        lines.append("| " + " | ".join([
            f"{r['n']:,}", LABEL[r["kind"]], "yes" if r["opened"] else f"no ({r['clients']}/{r['upstream']})",
            f"{r['open_s']:.1f}", f"{r['rss_idle']:.1f}", f"{r['rss_open']:.1f}", f"{r['mb_per_1k']:.2f}",
            f"{r['cpu_pct']:.0f}", f"{r['model_cpu_pct']:.0f}", f"{r['completed']:,}/{r['n']:,}",
            str(r["errors"]), f"{r['stream_p50']:.1f} / {r['stream_max']:.1f}"]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Plots and report


def plot_latency(summaries, path, rounds):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    wls = list(summaries)
    fig, axes = plt.subplots(1, len(wls), figsize=(6 * len(wls), 4.5), squeeze=False)
    for ax, wl in zip(axes[0], wls):
        s = summaries[wl]
        kinds = [k for k in KINDS if k in s]
        width = 0.8 / len(kinds)
        for i, k in enumerate(kinds):
            vals = [s[k]["p50"], s[k]["p99"], s[k]["p999"]]
            xs = [j + (i - (len(kinds) - 1) / 2) * width for j in range(3)]
            bars = ax.bar(xs, vals, width, label=LABEL[k])
            ax.bar_label(bars, fmt="%.2f", fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(3), ["p50", "p99", "p99.9"])
        ax.set_ylim(0, max(s[k]["p999"] for k in kinds) * 1.25)
        ax.set_ylabel("latency, ms")
        tool = "oha, fixed rate" if WORKLOADS[wl].get("fixed_rate") else "wrk"
        ax.set_title(f"{wl}: {tool} latency, median of {rounds} round(s)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k in KINDS:
        rs = sorted((r for r in rows if r["kind"] == k and "skipped" not in r), key=lambda r: r["n"])
        if not rs:
            continue
        a1.plot([r["n"] for r in rs], [r["rss_open"] for r in rs], marker="o", label=LABEL[k])
        a2.plot([r["n"] for r in rs], [r["cpu_pct"] for r in rs], marker="o", label=LABEL[k])
    a1.set_xlabel("open SSE streams")
    a1.set_ylabel("proxy RSS, MB")
    a1.set_title("RSS with N streams open")
    a2.set_xlabel("open SSE streams")
    a2.set_ylabel("proxy CPU, % of one core")
    a2.set_title("CPU with N streams open")
    for a in (a1, a2):
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_out(args):
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def sha12(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def header(args):
    binary_time = datetime.datetime.fromtimestamp(os.path.getmtime(args.bin)).isoformat(timespec="seconds")
    binary_sha = sha12(args.bin)
    commit = cmd_out(["git", "-C", h.ROOT, "rev-parse", "--short", "HEAD"])
    return "\n".join([
        "# modelgate vs nginx",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; host: {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}; RLIMIT_NOFILE {nofile_limit()}",
        f"- modelgate: `{args.bin_source}` ({cmd_out([args.bin, '--version'])}, built {binary_time}, "
        f"sha256 {binary_sha}…; git HEAD {commit}, the tree may differ); nginx: {cmd_out([Nginx.binary, '-v'])}; {cmd_out(['wrk', '-v'])}"
        + (f"; {cmd_out([h.oha_binary(), '--version'])}" if "rate" in args.workloads.split(",") else ""),
        f"- load: wrk -t{args.wrk_threads} -c{args.connections}, {args.rounds} round(s) of {args.seconds} s "
        f"per proxy and workload (+{args.warmup} s warm-up on each fresh process), rotated order; "
        f"proxy threads / nginx workers: {args.threads}; demo model threads: {args.model_threads}",
        "- proxies: nginx (conf/nginx.conf: key check, credential swap, proxy_buffering off, upstream "
        "keep-alive, no access log); modelgate passthrough (identity + credential swap, "
        "mask: {response: none}, no audit); modelgate full (identity, streaming masking of every "
        "entity, audit to a file sink, 5 policy rules incl. the injection screen, a local request-rate limit)"
        + ("; with --floors, plain Pingora 0.9.1 (crates.io, unpatched, Pingora's defaults except "
           "nginx's upstream timeouts) and the floor "
           "(the same minimal proxy on modelgate's patched Pingora with modelgate's settings), each doing "
           "only the key check and credential swap (loadtest/floor/src/main.rs): "
           + ", ".join(f"{k} sha256 {sha12(b)}…"
                       for k, b in args.floor_bins.items()) + "." if args.floors else "."),
        "- CPU µs/req: proxy CPU time (utime+stime; nginx master + workers) / requests; CPU cores: "
        "the same over the run's wall time; upstream CPU cores: the demo model's (near 1 × its "
        "threads: the upstream limits req/s, compare CPU/req). Peak RSS: VmHWM (nginx: sum of workers). Ratios and "
        "added latency: per round against that round's nginx run, then the median.",
        "- Loopback, client, proxy and upstream share the CPUs: on a small or shared machine the "
        "absolute numbers are noisy; compare within a run.",
    ])


# --------------------------------------------------------------------------


def main():
    global summary_probes, rate_offered, connections_used
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(h.ROOT, "target/release/modelgate"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="modelgate threads = nginx worker processes")
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--model-threads", type=int, default=1, help="demo model threads")
    ap.add_argument("--workloads", default="json,sse,rate",
                    help="comma-separated: json, sse, rate, https, handshake; 'none' for none")
    ap.add_argument("--rate", type=int, default=5000, help="rate workload: offered requests per second")
    ap.add_argument("--probes", type=int, default=30, help="TTFT probe streams per sse run")
    ap.add_argument("--sweep", default="", help="open-stream levels, e.g. 1,1000,10000 (default: no sweep)")
    ap.add_argument("--sweep-events", type=int, default=200)
    ap.add_argument("--sweep-delay-ms", type=int, default=100)
    ap.add_argument("--sweep-window", type=float, default=3.0, help="seconds CPU is measured with all streams open")
    ap.add_argument("--sweep-ramp", type=float, default=2000, help="sweep: streams started per second")
    ap.add_argument("--nginx-worker-connections", type=int, default=65536)
    ap.add_argument("--floors", action="store_true",
                    help="also run the two Pingora floors (json, sse and rate workloads; not the sweep)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s, few probes, short sweep streams")
    ap.add_argument("--results", default=RESULTS, help="directory for latest.md and the PNGs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.warmup, args.probes = 1, 2, 1, 5
        args.connections = min(args.connections, 16)
        args.sweep_events, args.sweep_window = 60, 1.0  # 6 s streams
    workloads = [w for w in args.workloads.split(",") if w and w != "none"]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    # wrk gives each of its threads connections // threads connections.
    levels = [max(int(x) // args.wrk_threads, 1) * args.wrk_threads for x in args.sweep.split(",") if x.strip()]
    if not os.path.exists(args.bin):
        sys.exit(f"{args.bin} missing: run `cargo build --release` (loadtest/run.sh does)")
    https = any(WORKLOADS[w].get("https") for w in workloads)
    for tool in ("wrk", Nginx.binary) + (("openssl",) if https else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run loadtest/run.sh (installs wrk, nginx and openssl)")
    if levels and args.quick:  # short streams, just long enough to open and measure
        need_s = max(levels) / args.sweep_ramp + 4 + args.sweep_window
        args.sweep_events = max(args.sweep_events, int(need_s * 1000 / args.sweep_delay_ms) + 1)
    if levels:
        stream_s = args.sweep_events * args.sweep_delay_ms / 1000
        need = max(levels) / args.sweep_ramp + 2 + args.sweep_window
        if stream_s < max(5, need):
            sys.exit(f"sweep streams last {stream_s:.1f} s: too short to open {max(levels)} at "
                     f"{args.sweep_ramp:.0f}/s and measure for {args.sweep_window} s before the "
                     f"first ones end (raise --sweep-events, --sweep-delay-ms or --sweep-ramp)")
    summary_probes, rate_offered, connections_used = args.probes, args.rate, args.connections
    if any(WORKLOADS[w].get("fixed_rate") for w in workloads):
        h.oha_binary()  # installs it now, not in the middle of a round
    if args.floors:
        if https:
            sys.exit("--floors: the floors have no HTTPS listener; leave out https and handshake")
        KINDS.extend(FLOORS)
    raise_nofile()
    atexit_register()
    # Run a private copy, so a `cargo build` meanwhile cannot mix two builds in one run.
    args.bin_source = args.bin
    bindir = tempfile.mkdtemp(prefix="mg-bin-")
    atexit.register(shutil.rmtree, bindir, True)
    args.bin = shutil.copy2(args.bin, os.path.join(bindir, "modelgate"))
    if args.floors:
        args.floor_bins = {k: shutil.copy2(b, os.path.join(bindir, k)) for k, b in build_floors().items()}

    tls = TestCert() if https else None
    model = h.DemoModel(args.bin, threads=args.model_threads)
    log(f"demo model on :{model.port}; RLIMIT_NOFILE {nofile_limit()}")
    summaries = {}
    for wl in workloads:
        rows = []
        for rnd in range(1, args.rounds + 1):
            i = (rnd - 1) % len(KINDS)
            for kind in KINDS[i:] + KINDS[:i]:
                rows.append(one_run(kind, wl, args, model, rnd, tls))
        summaries[wl] = summarize(rows)
        print("\n" + table(wl, summaries[wl], args.rounds) + "\n", flush=True)

    sweep_rows = []
    for i, n in enumerate(levels):
        problem = fd_budget_problem(n)
        base = KINDS[:3]  # the sweep leaves the floors out
        order = base[i % 3:] + base[:i % 3]
        for kind in order:
            if problem:
                sweep_rows.append({"kind": kind, "n": n, "skipped": problem})
            else:
                sweep_rows.append(sweep_level(kind, n, args, model))
        if problem:
            fail(f"sweep level {n} skipped: {problem}")
    model.stop()

    os.makedirs(args.results, exist_ok=True)
    md = [header(args), ""]
    for wl, s in summaries.items():
        md += [table(wl, s, args.rounds), ""]
    pngs = []
    if summaries:
        pngs.append(os.path.join(args.results, "latency.png"))
        plot_latency(summaries, pngs[-1], args.rounds)
    if sweep_rows:
        st = sweep_table(sweep_rows)
        stream_s = args.sweep_events * args.sweep_delay_ms / 1000
        md += [f"### sweep: N slow SSE streams open at once ({args.sweep_events} events "
               f"{args.sweep_delay_ms} ms apart, ~{stream_s:.0f} s each)", "",
               f"wrk -c N holds the streams, started over N / {args.sweep_ramp:.0f} s; they count as open "
               "once N sockets are established both on the proxy's port and on the demo model's. "
               "RSS: VmRSS (nginx: sum of workers) after warm-up (idle) and with all N open; "
               "MB per 1k = (open - idle) / N × 1000, so tiny N is all noise. CPU: over "
               f"{args.sweep_window:.0f} s with all open (each stream: {1000 / args.sweep_delay_ms:.0f} "
               "events/s). Completed: streams wrk read to the end (each connection sends one request). "
               "Stream s: how long a stream took, which grows past "
               f"{stream_s:.0f} s when the CPUs (demo model, proxy, wrk) cannot keep up.", "", st, ""]
        print("\n" + st + "\n", flush=True)
        if any("skipped" not in r for r in sweep_rows):
            pngs.append(os.path.join(args.results, "sweep.png"))
            plot_sweep(sweep_rows, pngs[-1])
    if failures:
        md += ["### failures", "", "```"] + failures + ["```", ""]
    with open(os.path.join(args.results, "latest.md"), "w") as f:
        f.write("\n".join(md))
    log(f"wrote {os.path.join(args.results, 'latest.md')} " + " ".join(pngs))
    if failures:
        log(f"{len(failures)} failure(s):\n  " + "\n  ".join(failures))
        sys.exit(1)


def atexit_register():
    atexit.register(_stop_nginxes)


if __name__ == "__main__":
    main()
