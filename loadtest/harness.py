"""Shared pieces of the load tests: starting the demo model, modelgate and
nginx on loopback ports, driving them with wrk, and reading a process's CPU
time and peak memory from /proc. Everything started is stopped on exit.
Loopback only; every run is bounded in time.
"""
import atexit
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.path.join(ROOT, "loadtest", "wrk", "request.lua")
CLIENT_KEY = "load-test-key"
ADMIN_TOKEN = "load-admin"
TICKS = os.sysconf("SC_CLK_TCK")

_procs = []


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn(args, log_path=None, env=None):
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    _procs.append(p)
    return p


def wait_http(url, timeout=20, headers=None):
    end = time.time() + timeout
    while time.time() < end:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {url}")


def stop(p, sig=signal.SIGTERM, timeout=30):
    """Stops a process (SIGTERM: graceful) and waits for it."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def user_system_seconds(pid):
    """User and system CPU time of a process (all its threads) and its reaped
    children, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + cutime) / TICKS, (stime + cstime) / TICKS


def cpu_seconds(pid):
    """User + system CPU time of a process and its reaped children, in seconds."""
    return sum(user_system_seconds(pid))


def _status_mb(pid, key):
    """A memory figure (`VmHWM`, `VmRSS`) from /proc/PID/status, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb(pid):
    return _status_mb(pid, "VmHWM")


def rss_mb(pid):
    return _status_mb(pid, "VmRSS")


def child_pids(pid):
    """Pids of the live child processes of `pid` (e.g. nginx's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if ppid == pid:
            out.append(int(d))
    return out


class DemoModel:
    """The built-in demo model as an upstream process."""

    def __init__(self, binary, threads=1):
        self.port = free_port()
        self.proc = spawn([binary, "demo-model", "--listen", f"127.0.0.1:{self.port}",
                           "--threads", str(threads)], env={"RUST_LOG": "error"})
        wait_http(f"http://127.0.0.1:{self.port}/health")

    def stop(self):
        stop(self.proc)


class Modelgate:
    """modelgate on its own ports with `body` (upstreams, routes, policies,
    audit...) after the generated server/listen/admin/clients keys."""

    def __init__(self, binary, body, threads=1, workdir=None, env=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="mg-load-")
        self.port, self.admin = free_port(), free_port()
        key_hash = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
        conf = (
            f"server:\n  threads: {threads}\n  pid_file: {self.dir}/mg.pid\n"
            f"  upgrade_sock: {self.dir}/upgrade.sock\n  grace_period_seconds: 1\n"
            f"  graceful_shutdown_timeout_seconds: 10\n"
            f"listen: [\"127.0.0.1:{self.port}\"]\n"
            f"admin: {{listen: \"127.0.0.1:{self.admin}\", token: \"{ADMIN_TOKEN}\"}}\n"
            f"clients:\n  - {{name: load, key_sha256: \"{key_hash}\", groups: [load]}}\n{body}"
        )
        self.conf = os.path.join(self.dir, "modelgate.yaml")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = spawn([binary, "-c", self.conf], os.path.join(self.dir, "gateway.log"),
                          env={"RUST_LOG": "warn", **(env or {})})
        wait_http(f"http://127.0.0.1:{self.admin}/readyz")

    def metrics(self):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}/metrics",
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.read().decode()

    def metric_sum(self, name):
        """Sum of every sample of metric `name` (all label sets)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_idle(self, timeout=10):
        """Waits until no request is in flight."""
        end = time.time() + timeout
        while self.metric_sum("modelgate_in_flight_requests") > 0 and time.time() < end:
            time.sleep(0.05)
        time.sleep(0.1)

    def stop(self):
        stop(self.proc)


def wrk_start(port, seconds, connections, threads=1, path="/v1/chat/completions", stream=False,
              events=0, delay_ms=0, key=CLIENT_KEY, timeout=10, env=None, https=False):
    """Starts wrk against 127.0.0.1:port (see `wrk`; `https`: over TLS);
    `env` adds variables for loadtest/wrk/request.lua. Read the summary with
    `wrk_summary`."""
    env = {
        "MG_KEY": key,
        "MG_STREAM": "true" if stream else "false",
        "MG_EVENTS": str(events),
        "MG_DELAY_MS": str(delay_ms),
        **(env or {}),
    }
    p = subprocess.Popen(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", f"{timeout}s",
         "-s", LUA, f"{'https' if https else 'http'}://127.0.0.1:{port}{path}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )
    p.deadline = seconds + timeout + 60
    return p


def wrk_summary(p):
    """Waits for a wrk started by `wrk_start` (SIGINT stops it early, with a
    summary) and returns its summary as a dict."""
    try:
        out, err = p.communicate(timeout=p.deadline)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"wrk printed no summary:\n{out}\n{err}")


def wrk(port, seconds, connections, threads=1, path="/v1/chat/completions", stream=False,
        events=0, delay_ms=0, key=CLIENT_KEY, timeout=10, env=None, https=False):
    """Runs wrk against 127.0.0.1:port and returns its summary (requests,
    errors, latency percentiles in microseconds) as a dict. `timeout`
    (seconds): responses slower than this count as timeouts."""
    return wrk_summary(wrk_start(port, seconds, connections, threads, path, stream, events,
                                 delay_ms, key, timeout, env, https))


OHA_VERSION = "1.16.0"
OHA_ROOT = os.path.join(ROOT, "loadtest", ".tools")


@functools.cache
def oha_binary():
    """oha (a load generator with a fixed request rate), version OHA_VERSION:
    from loadtest/.tools or PATH, else installed into loadtest/.tools with
    cargo (the JSON output read by `oha_fixed_rate` is that version's).
    Found once per run: each round's measured window runs no version check."""
    for found in (shutil.which("oha", path=os.path.join(OHA_ROOT, "bin")), shutil.which("oha")):
        if found and _oha_version(found) == OHA_VERSION:
            return found
    print(f"installing oha {OHA_VERSION} into {OHA_ROOT} (cargo install, a few minutes)",
          file=sys.stderr, flush=True)
    subprocess.run(["cargo", "install", "--locked", "--quiet", "oha", "--version", OHA_VERSION,
                    "--root", OHA_ROOT], check=True, timeout=1800)
    return os.path.join(OHA_ROOT, "bin", "oha")


def _oha_version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.split()[-1] if out.returncode == 0 and out.stdout.split() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def oha_fixed_rate(port, seconds, rate, connections, body, key=CLIENT_KEY, timeout=10):
    """Sends `rate` chat requests per second to 127.0.0.1:port for `seconds`
    over up to `connections` kept-alive connections, open loop: a request is
    due at its time whether or not earlier ones have been answered, and its
    latency counts from when it was due (oha -q with --latency-correction, so
    a proxy that falls behind is not hidden by coordinated omission). Returns
    a dict shaped like `wrk`'s summary (latencies in microseconds)."""
    args = [oha_binary(), "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-w",
            "-q", str(rate), "--latency-correction", "-c", str(connections), "-t", f"{timeout}s",
            "-m", "POST", "-H", "Content-Type: application/json", "-H", f"Authorization: Bearer {key}",
            "-H", "x-demo-delay-ms: 0", "-d", body, f"http://127.0.0.1:{port}/v1/chat/completions"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + timeout + 60)
    except subprocess.TimeoutExpired:
        sys.exit(f"oha did not finish within {seconds + timeout + 60} s: {' '.join(args)}")
    if out.returncode != 0:
        sys.exit(f"oha failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout)
    codes = {int(k): v for k, v in (r.get("statusCodeDistribution") or {}).items()}
    failed = sum((r.get("errorDistribution") or {}).values())
    # No answered request: oha writes null percentiles.
    pct = {k: (v if v is not None else float("nan")) for k, v in r["latencyPercentiles"].items()}
    return {
        "requests": sum(codes.values()),
        "duration_us": r["summary"]["total"] * 1e6,
        "p50": pct["p50"] * 1e6, "p99": pct["p99"] * 1e6, "p999": pct["p99.9"] * 1e6,
        "connect_errors": 0, "read_errors": failed, "write_errors": 0,
        "status_errors": sum(v for c, v in codes.items() if c != 200), "timeouts": 0,
        "errors_seen": r.get("errorDistribution") or {},
    }


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
