#!/usr/bin/env python3
"""Time to first token through modelgate, masking on vs off, in one run.

Starts the demo model (streaming 20 ms apart, like a ~50 token/s model) and
one gateway with two policies chosen by model name (`masked-*` → every
built-in entity masked, `plain-*` → masking off), then alternates streaming
requests between them and reports medians:

  first event  time from sending the request to the first SSE event
  first text   ... to the first event carrying non-empty text
  total        ... to the end of the stream

Usage: loadtest/ttft.py [--runs 40] [--bin target/release/modelgate]
Loopback only; bounded by --runs; stops everything it started.
"""
import argparse, hashlib, http.client, json, os, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import free_port, wait_http as _wait_url  # noqa: E402

def wait_http(port, path, timeout=15):
    _wait_url(f"http://127.0.0.1:{port}{path}", timeout)

def one(port, model, key):
    body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", "x-demo-delay-ms": "20"})
    r = c.getresponse()
    assert r.status == 200, r.status
    first_event = first_text = None
    buf = b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        now = time.perf_counter()
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if first_event is None:
                first_event = now
            data = ev.decode()[len("data: "):]
            if first_text is None and data != "[DONE]":
                for ch in json.loads(data).get("choices", []):
                    if (ch.get("delta") or {}).get("content"):
                        first_text = now
    total = time.perf_counter()
    c.close()
    return (first_event - t0) * 1e3, (first_text - t0) * 1e3, (total - t0) * 1e3

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--bin", default="target/release/modelgate")
    a = ap.parse_args()
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} missing: run `cargo build --release` first")
    up, gw, adm = free_port(), free_port(), free_port()
    key = "ttft-key"
    d = tempfile.mkdtemp()
    conf = f"""
server: {{threads: 2, pid_file: {d}/pid, upgrade_sock: {d}/sock, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1}}
listen: ["127.0.0.1:{gw}"]
admin: {{listen: "127.0.0.1:{adm}"}}
clients: [{{name: bench, key_sha256: "{hashlib.sha256(key.encode()).hexdigest()}"}}]
upstreams: {{demo: {{hosts: ["127.0.0.1:{up}"]}}}}
routes:
  - {{model: "masked-*", upstream: demo, policy: masked}}
  - {{model: "plain-*", upstream: demo, policy: plain}}
policies:
  masked: {{mask: {{response: all}}}}
  plain: {{mask: {{response: none}}}}
"""
    open(f"{d}/gw.yaml", "w").write(conf)
    env = dict(os.environ, RUST_LOG="error")
    procs = [subprocess.Popen([a.bin, "demo-model", "--listen", f"127.0.0.1:{up}"], env=env)]
    try:
        wait_http(up, "/health")
        procs.append(subprocess.Popen([a.bin, "-c", f"{d}/gw.yaml"], env=env))
        wait_http(adm, "/readyz")
        res = {"masked": [], "plain": []}
        for i in range(2):  # warm-up
            one(gw, "masked-demo", key); one(gw, "plain-demo", key)
        for i in range(a.runs):
            order = ["masked", "plain"] if i % 2 == 0 else ["plain", "masked"]
            for mode in order:
                res[mode].append(one(gw, f"{mode}-demo", key))
        med = {m: [statistics.median(x[k] for x in v) for k in range(3)] for m, v in res.items()}
        print(f"{'median ms over ' + str(a.runs) + ' runs':<24}{'first event':>12}{'first text':>12}{'total':>10}")
        for m in ("plain", "masked"):
            print(f"{'masking ' + ('off' if m == 'plain' else 'on'):<24}{med[m][0]:>12.2f}{med[m][1]:>12.2f}{med[m][2]:>10.1f}")
        print(f"{'on - off':<24}{med['masked'][0]-med['plain'][0]:>12.2f}{med['masked'][1]-med['plain'][1]:>12.2f}{med['masked'][2]-med['plain'][2]:>10.1f}")
    finally:
        for p in reversed(procs):
            p.kill(); p.wait()

if __name__ == "__main__":
    main()
