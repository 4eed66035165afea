#!/usr/bin/env python3
"""A/B two modelgate binaries under the same load, alternating, against one
demo model (from binary B): to tell a code regression from machine drift.

  loadtest/ab.py OLD_BINARY NEW_BINARY [--kind pass|full] [--workload json|sse] [--rounds 4] [--seconds 8] [--ttft]

Build the old binary from a worktree, e.g.
  git worktree add /tmp/old <commit> && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old/target cargo build --release)
Prints req/s and proxy CPU µs per request per round, then the medians.
With --ttft (SSE), 30 sequential probe streams run during each round, as in
vs_nginx.py, and their median time to first token is printed too.
Needs wrk (loadtest/run.sh installs it). Loopback only; bounded in time.
"""
import argparse
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import vs_nginx as v  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--kind", choices=["pass", "full"], default="pass")
    ap.add_argument("--workload", choices=["json", "sse"], default="json")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--ttft", action="store_true", help="probe time to first token (SSE)")
    args = ap.parse_args()
    bins = {"A": args.a, "B": args.b}
    sse = args.workload == "sse"
    load = {"stream": sse, "events": 200 if sse else 0}
    model = h.DemoModel(args.b)
    res = {k: [] for k in bins}
    try:
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for name in order:
                g = v.Gate(bins[name], args.kind, model.port, 1)
                try:
                    h.wrk(g.port, 2, 64, **load)  # warm-up
                    probe = {"ttft": [], "errors": []}
                    t = None
                    if args.ttft and sse:
                        span = max(args.seconds - 1.5, 0.5)
                        t = threading.Thread(target=v.probe_loop, args=(g.port, 30, span, probe))
                        t.start()
                    c0 = g.cpu()
                    out = h.wrk(g.port, args.seconds, 64, **load)
                    c1 = g.cpu()
                    if t:
                        t.join()
                finally:
                    g.stop()
                rps = out["requests"] / (out["duration_us"] / 1e6)
                cpu = (c1 - c0) / max(out["requests"], 1) * 1e6
                ttft = h.median(probe["ttft"]) if probe["ttft"] else float("nan")
                res[name].append((rps, cpu, ttft))
                print(f"round {r + 1} {name}: {rps:8.0f} req/s {cpu:6.1f} us/req "
                      f"p99 {out['p99'] / 1000:.2f} ms errors {out['status_errors']}"
                      + (f" TTFT p50 {ttft:.1f} ms (probe errors {len(probe['errors'])})" if t else ""),
                      flush=True)
    finally:
        model.stop()
    for k in bins:
        print(f"{k} ({bins[k]}): median {h.median([x[0] for x in res[k]]):.0f} req/s, "
              f"{h.median([x[1] for x in res[k]]):.1f} us CPU/req"
              + (f", TTFT {h.median([x[2] for x in res[k]]):.1f} ms" if args.ttft and sse else ""))


if __name__ == "__main__":
    main()
