#!/usr/bin/env python3
"""User and system CPU per request of nginx and modelgate passthrough (and,
with --floor, a floor proxy of loadtest/floor/src/main.rs) under the JSON
load, alternating in one run: where the gap to nginx is (the kernel work per
call is much the same for both; the difference is user space).

  loadtest/cpu_split.py [BINARY] [--rounds 2] [--seconds 8] [--floor FLOOR_BINARY]

BINARY defaults to target/release/modelgate. Reads utime and stime of each
process (nginx: master and workers) from /proc before and after each wrk run
(64 connections, one thread). Loopback only; bounded in time.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import vs_nginx as v  # noqa: E402

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary", nargs="?", default=os.path.join(h.ROOT, "target", "release", "modelgate"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--floor", help="a floor binary, e.g. target/release/examples/pingora_floor")
    args = ap.parse_args()
    kinds = ["nginx", "pass"] + (["floor"] if args.floor else [])
    model = h.DemoModel(args.binary)
    try:
        for r in range(args.rounds):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                binary = {"nginx": None, "floor": args.floor}.get(kind, args.binary)
                g = v.proxy(kind, binary, model.port, 1)
                try:
                    h.wrk(g.port, 2, 64)  # warm-up
                    pids = [g.proc.pid, *h.child_pids(g.proc.pid)]
                    before = [h.user_system_seconds(p) for p in pids]
                    out = h.wrk(g.port, args.seconds, 64)
                    after = [h.user_system_seconds(p) for p in pids]
                finally:
                    g.stop()
                n = max(out["requests"], 1)
                per_req = [sum(a[i] - b[i] for a, b in zip(after, before)) / n * 1e6 for i in (0, 1)]
                name = v.LABEL[kind]
                print(f"round {r + 1} {name:26} {out['requests'] / args.seconds:8.0f} req/s  "
                      f"user {per_req[0]:5.1f} us  system {per_req[1]:5.1f} us per request", flush=True)
    finally:
        model.stop()


if __name__ == "__main__":
    main()
