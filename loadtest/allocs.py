#!/usr/bin/env python3
"""Heap allocations per call of one or more modelgate binaries: a count,
not a timing, so unlike CPU time it does not move with the machine's load.

  loadtest/allocs.py BINARY [BINARY...] [--kind pass|full] [--seconds 3]

For each binary: starts the demo model and the gateway (loadtest/vs_nginx.py's
`pass` or `full` configuration) on loopback, puts perf uprobes on jemalloc's
allocation entry points (`_rjem_malloc`, `calloc`, `mallocx`, `realloc`,
`rallocx`) in that binary, counts them with `perf stat` over a wrk run (16
connections), and prints allocations per completed request. The probes are
removed afterwards. Needs root (uprobes); installs wrk and Debian's
linux-perf (scripts/system-deps.sh) when they are missing. The uprobes slow every
allocation down, so the request rate here means nothing. In `full` mode the
audit writer's allocations for the calls are counted too (its batches can
lag the window by a few records).
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import vs_nginx as v  # noqa: E402

FUNCS = ["malloc", "calloc", "mallocx", "realloc", "rallocx"]


def probes(binary, group, add):
    for f in FUNCS:
        if add:
            subprocess.run(["perf", "probe", "-q", "-x", binary, "-a", f"{group}:{group}_{f}=_rjem_{f}"],
                           check=True)
    if not add:
        subprocess.run(["perf", "probe", "-q", "-d", f"{group}:*"], check=False,
                       stderr=subprocess.DEVNULL)


def count(binary, kind, seconds, group):
    model = h.DemoModel(binary)
    fd, out_file = tempfile.mkstemp(prefix="mg-allocs-")
    os.close(fd)
    try:
        g = v.Gate(binary, kind, model.port, 1)
        try:
            h.wrk(g.port, 1, 16)  # warm-up: connections, pools, lazy statics
            st = subprocess.Popen(["perf", "stat", "-x,", "-e", f"{group}:*", "-p", str(g.proc.pid),
                                   "-o", out_file])
            time.sleep(0.5)
            out = h.wrk(g.port, seconds, 16)
            time.sleep(0.3)
            st.send_signal(signal.SIGINT)
            st.wait()
        finally:
            g.stop()
    finally:
        model.stop()
    total = 0
    with open(out_file) as f:
        for line in f:
            fields = line.split(",")
            if len(fields) > 2 and fields[0].strip().isdigit():
                total += int(fields[0])
    os.unlink(out_file)
    return total, out["requests"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--kind", choices=["pass", "full"], default="pass")
    ap.add_argument("--seconds", type=int, default=3)
    args = ap.parse_args()
    deps = os.path.join(h.ROOT, "scripts", "system-deps.sh")
    subprocess.run(["bash", deps, "wrk"], check=True)
    if not shutil.which("perf"):
        subprocess.run(["bash", deps, "linux-perf"], check=True)
    for i, b in enumerate(args.binaries):
        b = os.path.abspath(b)
        group = f"mgallocs{os.getpid()}x{i}"
        probes(b, group, False)
        probes(b, group, True)
        try:
            total, requests = count(b, args.kind, args.seconds, group)
        finally:
            probes(b, group, False)
        if requests == 0:
            sys.exit(f"{b}: no request completed")
        print(f"{b} ({args.kind}): {total} allocations / {requests} requests = "
              f"{total / requests:.1f} per call", flush=True)


if __name__ == "__main__":
    main()
