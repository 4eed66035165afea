#!/usr/bin/env python3
"""Drift score over time from one real run, as a picture for the README.

Starts the demo model and a gateway with a small `drift:` block (window 200,
baseline learned from the first 300 calls, scores every 20 calls), then sends
seeded traffic through the gateway in three phases:

  A  stable    800 calls: answers of 40±16 words, 3% refusals, fingerprint up-a
               (the first 300 are learned as the baseline; scores appear once
               the 200-call window is full, at call 500)
  B  shifted   600 calls: answers of 110±44 words, 30% refusals, fingerprint up-b
  C  back      600 calls: as A, but the fingerprint stays up-b

Every 20 calls it scrapes the admin `/metrics` for
`modelgate_drift_score{model="llama-demo",route="chat",signal=...}` and, at
the end, reads the `drift_alert` records of the audit file. It draws the
score of each signal against the number of calls (log scale, the 0.25 alert
threshold dashed, the phases shaded, alerts marked) and writes a short text
summary next to the picture.

Run from the repository root:

  .venv/bin/python loadtest/drift_plot.py                  # docs/drift.png + docs/drift.txt
  .venv/bin/python loadtest/drift_plot.py --seed 7 --out /tmp/drift.png
  .venv/bin/python loadtest/drift_plot.py --bin target/debug/modelgate

Default binary: target/release/modelgate if it is newer than src/, else the
newer of it and target/debug/modelgate (build one first: `cargo build`).
Loopback only, about 2000 calls (well under two minutes), and both processes
are stopped at the end, errors included. Needs only the standard library and matplotlib.
"""
import argparse
import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = "llama-demo"
ROUTE = "chat"
SIGNALS = ["response_chars", "completion_tokens", "refusal", "finish_reason", "ttft_ms"]
THRESHOLD = 0.25
# The gateway's built-in threshold for timing signals (ttft_ms, tokens_per_second).
TIMING_THRESHOLD = 0.5
WINDOW, BASELINE_CALLS, EVALUATE_EVERY = 200, 300, 20
ADMIN_TOKEN = "plot-token"
CLIENT_KEY = "plot-key-alice"
REFUSAL = "I'm sorry, but I can't help with that request."
VOCAB = (
    "the a model answer gateway request token stream latency route upstream "
    "policy window baseline score signal value simple small quick steady local "
    "cluster server cache batch queue result summary context prompt reply"
).split()

# (name, calls, words mean, words sd, refusal share, fingerprint)
PHASES = [
    ("stable", 800, 40, 16, 0.03, "up-a"),
    ("shifted", 600, 110, 44, 0.30, "up-b"),
    ("back", 600, 40, 16, 0.03, "up-b"),
]
SCORE_FLOOR = 1e-4  # scores of 0 are drawn here on the log scale

SCORE_RE = re.compile(r'^modelgate_drift_score\{([^}]*)\}\s+(\S+)$')
LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def default_bin():
    """target/release/modelgate when it is newer than every file under src/,
    else the newer of it and target/debug/modelgate."""
    found = [os.path.join(ROOT, "target", p, "modelgate") for p in ("release", "debug")]
    found = [p for p in found if os.path.exists(p)]
    if not found:
        return None
    newest_src = max((os.path.getmtime(os.path.join(d, f))
                      for d, _, files in os.walk(os.path.join(ROOT, "src")) for f in files),
                     default=0)
    if "release" in found[0] and os.path.getmtime(found[0]) >= newest_src:
        return found[0]
    return max(found, key=os.path.getmtime)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_ok(url, timeout, procs, headers=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, p, log in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} while waiting for {url}:\n{tail(log)}")
        try:
            status, _ = http_get(url, headers, timeout=2)
            if status == 200:
                return
            last = status
        except urllib.error.HTTPError as e:
            last = e.code
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} not 200 after {timeout}s (last: {last})")


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def stop(p, timeout=8):
    if p.poll() is not None:
        return
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


class AuditTail:
    """Counts `"kind":"call"` records in the audit file as it grows."""

    def __init__(self, path):
        self.path, self.offset, self.rest, self.calls = path, 0, b"", 0

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.calls
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        self.calls += sum(1 for l in lines if b'"kind":"call"' in l)
        return self.calls

    def wait(self, n, timeout=3.0):
        deadline = time.monotonic() + timeout
        while self.poll() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def scores(admin):
    _, body = http_get(f"http://{admin}/metrics", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    out = {}
    for line in body.decode().splitlines():
        m = SCORE_RE.match(line)
        if not m:
            continue
        labels = dict(LABEL_RE.findall(m.group(1)))
        if labels.get("model") == MODEL and labels.get("route") == ROUTE:
            out[labels.get("signal")] = float(m.group(2))
    return out


def plan(seed):
    """Every call's (phase, stream, text, fingerprint), from one seeded generator."""
    rng = random.Random(seed)
    calls = []
    for name, n, mean, sd, refusals, fp in PHASES:
        for _ in range(n):
            if rng.random() < refusals:
                text = REFUSAL
            else:
                words = max(3, round(rng.gauss(mean, sd)))
                text = " ".join(rng.choice(VOCAB) for _ in range(words)).capitalize() + "."
            calls.append((name, len(calls) % 2 == 0, text, fp))
    return calls


class Client:
    """One keep-alive connection per worker thread."""

    def __init__(self, port):
        self.port, self.local = port, threading.local()

    def call(self, stream, text, fp):
        body = {"model": MODEL, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            body["stream_options"] = {"include_usage": True}
        headers = {
            "Authorization": f"Bearer {CLIENT_KEY}",
            "Content-Type": "application/json",
            "x-demo-text": text,
            "x-demo-fingerprint": fp,
            "x-demo-delay-ms": "0",
        }
        for attempt in range(2):
            c = getattr(self.local, "conn", None)
            if c is None:
                c = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                c.request("POST", "/v1/chat/completions", json.dumps(body), headers)
                r = c.getresponse()
                data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"call answered {r.status}: {data[:300]!r}")
                return
            except (http.client.HTTPException, OSError):
                c.close()
                self.local.conn = None
                if attempt:
                    raise


def read_audit(path):
    """drift_alert records with `at`: the number of call records before them."""
    alerts, calls = [], 0
    with open(path, errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            kind = rec.get("kind")
            if kind == "call":
                calls += 1
            elif kind == "drift_alert":
                rec["at"] = calls
                alerts.append(rec)
    return alerts, calls


def phase_spans():
    """Shaded spans: (start, end, label, colour)."""
    a = PHASES[0][1]
    b = a + PHASES[1][1]
    c = b + PHASES[2][1]
    return [
        (0, BASELINE_CALLS, "baseline learning", "#dddddd"),
        (BASELINE_CALLS, a, "stable", "#e3f1e3"),
        (a, b, "shifted\n(longer, 30% refusals,\nfingerprint up-b)", "#f8e0d8"),
        (b, c, "back to stable\n(fingerprint stays up-b)", "#e3f1e3"),
    ]


def summarise(series, alerts, total_calls, seed, binary):
    a = PHASES[0][1]
    b = a + PHASES[1][1]
    c = b + PHASES[2][1]
    cols = [
        (f"stable {BASELINE_CALLS + WINDOW}-{a}", BASELINE_CALLS + WINDOW, a),
        (f"shifted {a + 1}-{b}", a + 1, b),
        (f"back {b + 1}-{b + WINDOW}", b + 1, b + WINDOW),
        (f"back {b + WINDOW + 1}-{c}", b + WINDOW + 1, c),
    ]
    lines = [
        f"modelgate drift run: seed {seed}, {total_calls} calls, window {WINDOW}, "
        f"baseline {BASELINE_CALLS} calls, scores every {EVALUATE_EVERY}, threshold {THRESHOLD}",
        f"binary: {os.path.relpath(binary, ROOT)}",
        "",
        "max drift score (PSI) per signal and phase (window in calls; 'back' split where the",
        "window stops holding shifted calls):",
        f"  {'signal':<18}" + "".join(f"{name:>18}" for name, _, _ in cols),
    ]
    for s in SIGNALS:
        row = f"  {s:<18}"
        for _, lo, hi in cols:
            vals = [v for x, v in series[s] if lo <= x <= hi and v is not None]
            row += f"{max(vals):>18.4f}" if vals else f"{'-':>18}"
        lines.append(row)
    lines += ["", f"alerts ({len(alerts)}):"]
    for al in alerts:
        extra = ""
        if al.get("signal") == "fingerprint":
            extra = f"  {al.get('field')}: {al.get('seen')} (known {al.get('known')})"
        elif "score" in al:
            extra = f"  score {al['score']}"
        lines.append(f"  call {al['at']:>5}  {al.get('state', '?'):<8} {al.get('signal', '?'):<18}{extra}")
    if not alerts:
        lines.append("  none")
    return "\n".join(lines) + "\n"


def draw(series, alerts, out, total_calls):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
    for lo, hi, label, colour in phase_spans():
        ax.axvspan(lo, hi, color=colour, zorder=0, lw=0)
        ax.text((lo + hi) / 2, 0.985, label, transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=9, color="#444444")
    ax.axvspan(BASELINE_CALLS, BASELINE_CALLS + WINDOW, color="#ffffff", alpha=0.45, zorder=0, lw=0)
    ax.text(BASELINE_CALLS + WINDOW / 2, 0.87, "(window filling:\nno score yet)",
            transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8, color="#777777")

    colours = {}
    for s in SIGNALS:
        pts = [(x, max(v, SCORE_FLOOR)) for x, v in series[s] if v is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        label = s
        if s == "ttft_ms":
            label += " (a timing: load-sensitive)"
        if max(ys) <= SCORE_FLOOR:
            label += f" (0 throughout, drawn at {SCORE_FLOOR:g})"
        (line,) = ax.plot(xs, ys, lw=1.6, label=label, zorder=3)
        colours[s] = line.get_color()

    ax.axhline(THRESHOLD, ls="--", color="black", lw=1, zorder=2)
    ax.text(10, THRESHOLD * 1.08, f"alert threshold {THRESHOLD}", fontsize=8, va="bottom")
    ax.axhline(TIMING_THRESHOLD, ls=":", color="grey", lw=1, zorder=2)
    ax.text(10, TIMING_THRESHOLD * 1.08, f"timing signals' threshold {TIMING_THRESHOLD}",
            fontsize=8, va="bottom", color="dimgrey")

    others = sorted({al.get("signal") for al in alerts}
                    - set(colours) - {"fingerprint", None})
    for al in alerts:
        x, sig, state = al["at"], al.get("signal"), al.get("state")
        if sig == "fingerprint":
            ax.axvline(x, color="purple", ls=":", lw=1.2, zorder=2)
            ax.text(x + 8, 0.80, f"alert: system_fingerprint\n{al.get('seen')} seen",
                    transform=ax.get_xaxis_transform(), fontsize=8, color="purple", va="top")
            continue
        y = max(float(al.get("score") or SCORE_FLOOR), SCORE_FLOOR)
        c = colours.get(sig, "#999999")
        if state == "firing":
            ax.scatter([x], [y], marker="^", s=70, color=c, edgecolors="black", zorder=5)
        else:
            ax.scatter([x], [y], marker="o", s=45, facecolors="white", edgecolors=c,
                       linewidths=1.6, zorder=5)

    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], ls="none", marker="^", ms=8, mfc="white", mec="black", label="alert fired"),
        Line2D([], [], ls="none", marker="o", ms=7, mfc="white", mec="black", label="alert resolved"),
    ]
    if any(al.get("signal") == "fingerprint" for al in alerts):
        handles.append(Line2D([], [], color="purple", ls=":", label="fingerprint alert"))
    if others:
        handles.append(Line2D([], [], ls="none", marker="^", ms=8, mfc="#999999", mec="black",
                              label=f"alert on {', '.join(others)} (not drawn)"))
    ax.set_yscale("log")
    ax.set_ylim(SCORE_FLOOR * 0.8, 20)
    ax.set_xlim(0, total_calls)
    ax.set_xticks([0, BASELINE_CALLS, BASELINE_CALLS + WINDOW] + list(range(800, total_calls + 1, 200)))
    ax.set_xlabel("calls through the gateway")
    ax.set_ylabel("drift score (PSI, log scale)")
    ax.set_title("modelgate drift score (PSI) per signal, one run")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8,
              ncol=4, frameon=False)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run(args, tmp):
    model_port, gw_port, admin_port = free_port(), free_port(), free_port()
    admin = f"127.0.0.1:{admin_port}"
    audit = os.path.join(tmp, "audit.jsonl")
    conf = f"""
server: {{threads: 2, pid_file: {tmp}/mg.pid, upgrade_sock: {tmp}/up.sock, grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 2}}
listen: ["127.0.0.1:{gw_port}"]
admin: {{listen: "{admin}", token: "{ADMIN_TOKEN}"}}
clients:
  - {{name: alice, key_sha256: "{hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}"}}
upstreams:
  demo: {{hosts: ["127.0.0.1:{model_port}"], health_check: {{interval: 1s}}}}
routes:
  - {{name: {ROUTE}, path_prefix: "/v1/", upstream: demo}}
audit:
  sinks: [{{kind: file, path: "{audit}"}}]
drift:
  window: {WINDOW}
  baseline_calls: {BASELINE_CALLS}
  evaluate_every: {EVALUATE_EVERY}
  models_check_interval: 0s
"""
    conf_path = os.path.join(tmp, "gw.yaml")
    with open(conf_path, "w") as f:
        f.write(conf)

    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    procs = []
    t_start = time.monotonic()
    try:
        for name, argv in [
            ("demo model", [args.bin, "demo-model", "--listen", f"127.0.0.1:{model_port}", "--name", "up-a"]),
            ("gateway", [args.bin, "-c", conf_path]),
        ]:
            log = os.path.join(tmp, name.replace(" ", "-") + ".log")
            p = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=tmp)
            procs.append((name, p, log))
            if name == "demo model":
                wait_ok(f"http://127.0.0.1:{model_port}/health", 15, procs)
        wait_ok(f"http://{admin}/healthz", 20, procs)
        wait_ok(f"http://{admin}/readyz", 20, procs)
        print(f"gateway up on 127.0.0.1:{gw_port} (admin {admin}), {os.path.relpath(args.bin, ROOT)}", file=sys.stderr)

        calls = plan(args.seed)
        client = Client(gw_port)
        tailer = AuditTail(audit)
        series = {s: [] for s in SIGNALS}
        lagging = 0
        with ThreadPoolExecutor(args.threads) as pool:
            for start in range(0, len(calls), EVALUATE_EVERY):
                batch = calls[start:start + EVALUATE_EVERY]
                list(pool.map(lambda c: client.call(*c[1:]), batch))
                sent = start + len(batch)
                if not tailer.wait(sent):
                    lagging += 1
                    time.sleep(0.05)
                got = scores(admin)
                for s in SIGNALS:
                    series[s].append((sent, got.get(s)))
                if sent % 200 == 0:
                    shown = " ".join(f"{s}={got[s]:.3f}" for s in SIGNALS if s in got)
                    print(f"  {sent:>5} calls ({calls[sent - 1][0]}): {shown or 'no score yet'}", file=sys.stderr)
                if time.monotonic() - t_start > args.max_seconds:
                    raise RuntimeError(f"over {args.max_seconds}s after {sent} calls; stopping")
        if lagging:
            print(f"warning: {lagging} scrapes came before the audit file held every call", file=sys.stderr)
    finally:
        for name, p, _ in reversed(procs):
            stop(p)
    alerts, audited = read_audit(audit)
    alerts = [a for a in alerts if a.get("route") in (None, ROUTE)]
    return series, alerts, len(calls), audited


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=default_bin(),
                    help="modelgate binary (default: target/release if newer than src/, else the newer build)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "drift.png"),
                    help="the PNG; the summary goes next to it with .txt (default docs/drift.png)")
    ap.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    ap.add_argument("--max-seconds", type=float, default=110, help="give up after this long")
    ap.add_argument("--alerts-out", default=os.path.join(ROOT, "docs", "drift-alerts.jsonl"),
                    help="where the run's drift_alert audit records are copied (as written)")
    args = ap.parse_args()
    if not args.bin or not os.path.exists(args.bin):
        sys.exit("no modelgate binary: run `cargo build` (or pass --bin PATH)")
    args.bin = os.path.abspath(args.bin)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("matplotlib missing: .venv/bin/python -m pip install -r loadtest/requirements.txt")

    t0, load0 = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="drift-plot-") as tmp:
        series, alerts, total, audited = run(args, tmp)
        # The alert records exactly as the gateway sealed them.
        with open(os.path.join(tmp, "audit.jsonl")) as src, open(args.alerts_out, "w") as dst:
            dst.writelines(l for l in src if '"kind":"drift_alert"' in l)
    if audited < total:
        print(f"warning: the audit file holds {audited} call records for {total} calls", file=sys.stderr)
    text = summarise(series, alerts, total, args.seed, args.bin)
    text += (f"\nrun took {time.monotonic() - t0:.1f}s; load average {load0:.2f} before, "
             f"{os.getloadavg()[0]:.2f} after, {os.cpu_count()} CPUs (ttft_ms and\n"
             "tokens_per_second are timings: they move with the machine's load, not only the model's)\n")
    draw(series, alerts, args.out, total)
    txt = os.path.splitext(args.out)[0] + ".txt"
    with open(txt, "w") as f:
        f.write(text)
    print(text, end="")
    print(f"wrote {args.out} and {txt}", file=sys.stderr)


if __name__ == "__main__":
    main()
