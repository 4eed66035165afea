#!/usr/bin/env python3
"""The audit trail under sustained load: throughput with audit on vs off,
records counted against requests served, and a kill -9 mid-load.

Each round starts a fresh gateway in each mode (alternating which goes
first) in front of the same demo model, warms it up, drives it with wrk for
--seconds, then stops it gracefully (the writer drains). Masking is on in
both modes, so the only difference is the audit trail (file sink, masked
bodies, the default fail_closed).

Checks, per audited run: `call` records == requests the gateway served
(modelgate_requests_total), nothing dropped or refused, and
`modelgate audit verify` passes. Then: kill -9 under load, restart on the
same file, more load, stop; verify passes over everything and the chain
resumes right after the last whole record.

Prints a table and exits 1 if audit costs 10% throughput or more (median of
per-round ratios), or if any record is missing.

Usage: loadtest/audit.py [--bin target/release/modelgate] [--rounds 3]
                         [--seconds 10] [--connections 32] [--stream]
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def config(model_port, audit_dir):
    body = (
        f"upstreams:\n  model:\n    hosts: [\"127.0.0.1:{model_port}\"]\n"
        f"routes:\n  - {{path_prefix: \"/\", upstream: model}}\n"
        f"policies:\n  default: {{mask: {{response: all}}}}\n"
    )
    if audit_dir:
        body += f"audit:\n  sinks:\n    - {{kind: file, path: \"{audit_dir}/audit.jsonl\"}}\n"
    return body


def audit_files(d):
    return sorted(glob.glob(os.path.join(d, "audit*.jsonl")))


def records(d):
    out = []
    for f in audit_files(d):
        with open(f, "rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):
                    out.append(json.loads(line))
    return out


def verify(binary, d):
    r = subprocess.run([binary, "audit", "verify", *audit_files(d)], capture_output=True, text=True)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def one_run(args, model, audited):
    audit_dir = tempfile.mkdtemp(prefix="mg-audit-") if audited else None
    gw = h.Modelgate(args.bin, config(model.port, audit_dir), threads=args.threads)
    h.wrk(gw.port, 2, args.connections, stream=args.stream)  # warm-up
    cpu0 = h.cpu_seconds(gw.proc.pid)
    res = h.wrk(gw.port, args.seconds, args.connections, stream=args.stream)
    cpu = h.cpu_seconds(gw.proc.pid) - cpu0
    # Calls cut off when wrk stopped finish (and are counted) a moment later.
    gw.wait_idle()
    served = gw.metric_sum("modelgate_requests_total")
    dropped = gw.metric_sum("modelgate_audit_dropped_total")
    refused = gw.metric_sum("modelgate_audit_refused_total")
    gw.stop()  # graceful: drains the queue
    row = {
        "mode": "on" if audited else "off",
        "rps": res["requests"] / (res["duration_us"] / 1e6),
        "p50_ms": res["p50"] / 1e3,
        "p99_ms": res["p99"] / 1e3,
        "cpu_us_per_req": cpu / max(res["requests"], 1) * 1e6,
        "errors": res["status_errors"] + res["read_errors"] + res["write_errors"] + res["timeouts"],
        "served": int(served),
    }
    if audited:
        recs = records(audit_dir)
        calls = sum(1 for r in recs if r["kind"] == "call")
        ok, out = verify(args.bin, audit_dir)
        row.update(records=calls, lost=int(served) - calls, dropped=int(dropped),
                   refused=int(refused), verify="ok" if ok else out)
        shutil.rmtree(audit_dir)
    return row


def kill9_phase(args, model):
    """kill -9 under load, restart on the same file, verify everything."""
    audit_dir = tempfile.mkdtemp(prefix="mg-audit-kill-")
    gw = h.Modelgate(args.bin, config(model.port, audit_dir), threads=args.threads)
    port = gw.port
    t = threading.Thread(target=lambda: h.wrk(port, 4, args.connections, stream=args.stream))
    t.start()
    time.sleep(2)
    gw.proc.kill()
    gw.proc.wait()
    t.join()
    ok1, out1 = verify(args.bin, audit_dir)
    before = records(audit_dir)
    last = before[-1]["seq"] if before else 0
    gw = h.Modelgate(args.bin, config(model.port, audit_dir), threads=args.threads,
                     workdir=tempfile.mkdtemp(prefix="mg-load-"))
    h.wrk(gw.port, 2, args.connections, stream=args.stream)
    gw.stop()
    ok2, out2 = verify(args.bin, audit_dir)
    after = records(audit_dir)
    start = next((r for r in after if r["kind"] == "start" and r["seq"] > last), None)
    resumed = start is not None and start["seq"] == last + 1 and start["resumed_after_seq"] == last
    shutil.rmtree(audit_dir)
    return {
        "records_before_kill": len(before),
        "verify_after_kill": "ok" if ok1 else out1,
        "verify_after_restart": "ok" if ok2 else out2,
        "chain_resumed": resumed,
        "records_total": len(after),
        "calls_begun_without_end": next((line for line in out2.splitlines() if "begun" in line), ""),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(h.ROOT, "target/release/modelgate"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="gateway worker threads")
    ap.add_argument("--stream", action="store_true", help="SSE answers instead of JSON")
    args = ap.parse_args()

    model = h.DemoModel(args.bin)
    rows = []
    for i in range(args.rounds):
        order = [False, True] if i % 2 == 0 else [True, False]
        pair = {}
        for audited in order:
            row = one_run(args, model, audited)
            row["round"] = i + 1
            rows.append(row)
            pair[row["mode"]] = row
        pair["on"]["ratio"] = pair["on"]["rps"] / pair["off"]["rps"]
    kill = kill9_phase(args, model)
    model.stop()

    workload = "SSE streams" if args.stream else "JSON answers"
    print(f"\naudit on vs off: {args.rounds} rounds x {args.seconds}s, {args.connections} connections, "
          f"{workload}, gateway threads={args.threads}\n")
    print("| round | audit | req/s | p50 ms | p99 ms | CPU µs/req | served | records | lost | dropped | refused | verify | on/off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['round']} | {r['mode']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['cpu_us_per_req']:.0f} | {r['served']} | {r.get('records', '')} | {r.get('lost', '')} | "
              f"{r.get('dropped', '')} | {r.get('refused', '')} | {r.get('verify', '')} | "
              f"{r['ratio']:.3f} |" if "ratio" in r else
              f"| {r['round']} | {r['mode']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['cpu_us_per_req']:.0f} | {r['served']} | | | | | | |")
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    med = h.median(ratios)
    on = [r for r in rows if r["mode"] == "on"]
    lost = sum(r["lost"] for r in on) + sum(r["dropped"] for r in on)
    errors = sum(r["errors"] for r in rows)
    print(f"\nmedian throughput ratio on/off: {med:.3f} (cost {100 * (1 - med):.1f}%); "
          f"records lost: {lost}; failed requests: {errors}")
    print(f"kill -9 under load: {json.dumps(kill)}")

    failed = []
    if med < 0.90:
        failed.append(f"audit costs {100 * (1 - med):.1f}% throughput (limit 10%)")
    if lost or any(r["verify"] != "ok" for r in on) or any(r["refused"] for r in on):
        failed.append("records missing, refused or a chain broken")
    if errors:
        failed.append(f"{errors} failed requests")
    if kill["verify_after_kill"] != "ok" or kill["verify_after_restart"] != "ok" or not kill["chain_resumed"]:
        failed.append("kill -9 phase failed")
    if failed:
        print("FAIL: " + "; ".join(failed))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
