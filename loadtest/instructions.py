#!/usr/bin/env python3
"""User-space instructions per call of one or more proxy binaries (modelgate;
with --kind floor or nginx, the load test's floors or nginx): a
count, not a timing, so it does not move with the machine's load (the same
binary and load give the same figure to within a fraction of a percent).

  loadtest/instructions.py BINARY [BINARY...] [--kind pass|full|floor|nginx] [--workload json|sse] [--seconds 10]

For each binary: starts the demo model (that binary, natively) and the
gateway under `valgrind --tool=callgrind` in loadtest/vs_nginx.py's `pass`
or `full` configuration on loopback, warms it up, zeroes the counters, runs
wrk (16 connections) for --seconds, dumps the counters, and prints the
instructions executed in the gateway (all its threads; the kernel's work is
not counted) divided by the calls its `request_filter` hook saw. With
`--kind floor` the binaries are floor proxies (loadtest/floor/src/main.rs,
`loadtest/vs_nginx.py --floors`: target/release/examples/pingora_floor or
target/floor/release/pingora-floor), divided by the requests wrk completed
(their hook is inlined; up to 16 warm-up calls finishing after the
counters are zeroed and up to 16 calls cut off at the end are counted in
the instructions and not in the calls, with the connections' set-up and
teardown: well under 1 % of the thousands of calls), and the
demo model is --model-bin (default target/release/modelgate). With
`--kind nginx` the binaries are nginx binaries (e.g. /usr/sbin/nginx),
run from conf/nginx.conf as one process (`master_process off`), calls
counted the same way. Valgrind
runs the gateway about 20-50 times slower, so the request rate means
nothing. A cryptographic hash done in hardware on a real CPU (SHA-NI) is
done in software under valgrind, so the client-key check weighs more here
than it does in the CPU profile.

The dump is kept (`--keep DIR`) for `callgrind_annotate --inclusive=yes` or
`--tree=calling`. Needs wrk and valgrind (installed when missing, with
scripts/system-deps.sh). Loopback only; bounded in time.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import vs_nginx as v  # noqa: E402

# The gateway under valgrind takes far longer than the harness's 20 s to
# answer /readyz.
_wait_http = h.wait_http
h.wait_http = lambda url, timeout=20, headers=None: _wait_http(url, max(timeout, 180), headers)

HOOK = "ProxyHttp>::request_filter"
# Kinds whose calls are wrk's completed requests, with the demo model from
# --model-bin (their binaries have none).
COUNTED_BY_WRK = ("floor", "nginx")


def measure(binary, kind, workload, seconds, out, model_bin):
    """Runs the gateway under callgrind; returns (instructions, calls, dump)."""
    wrapper = out + ".sh"
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --dump-instr=no "
                f"--callgrind-out-file={out} \"{binary}\" \"$@\"\n")
    os.chmod(wrapper, 0o755)
    sse = workload == "sse"
    load = {"stream": sse, "events": 200 if sse else 0}
    model = h.DemoModel(model_bin or binary)
    try:
        g = v.proxy(kind, wrapper, model.port, 1, timeout=180, single=True)
        try:
            h.wrk(g.port, 3, 16, timeout=30, **load)  # warm-up: pools, lazy statics
            subprocess.run(["callgrind_control", "--zero", str(g.proc.pid)], check=True,
                           capture_output=True)
            r = h.wrk(g.port, seconds, 16, timeout=30, **load)
            time.sleep(0.5)
            subprocess.run(["callgrind_control", "--dump", str(g.proc.pid)], check=True,
                           capture_output=True)
            if r["status_errors"]:
                sys.exit(f"{binary}: {r['status_errors']} non-2xx answers")
        finally:
            g.stop()
    finally:
        model.stop()
    # `--dump` writes OUT.1 (the exit writes OUT itself, from the zeroing on).
    dump = out + ".1"
    if not os.path.exists(dump):
        sys.exit(f"{binary}: callgrind wrote no dump {dump}")
    ann = subprocess.run(["callgrind_annotate", "--tree=caller", "--threshold=100", dump],
                         capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", ann).group(1).replace(",", ""))
    if kind in COUNTED_BY_WRK:
        return total, r["requests"], dump
    # The hook's callers, with their call counts, are listed above its line.
    lines = ann.splitlines()
    at = next(i for i, l in enumerate(lines) if "*  " in l and HOOK in l)
    calls = 0
    for l in reversed(lines[:at]):
        if not l.strip():
            break
        m = re.search(r"\(([\d,]+)x\)", l)
        if m:
            calls += int(m.group(1).replace(",", ""))
    return total, calls, dump


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--kind", choices=["pass", "full", "floor", "nginx"], default="pass")
    ap.add_argument("--model-bin", default=os.path.join(h.ROOT, "target", "release", "modelgate"),
                    help="--kind floor or nginx: the modelgate binary whose demo model is the upstream")
    ap.add_argument("--workload", choices=["json", "sse"], default="json")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--keep", help="directory for the callgrind dumps (default: a temporary one)")
    args = ap.parse_args()
    deps = os.path.join(h.ROOT, "scripts", "system-deps.sh")
    subprocess.run(["bash", deps, "wrk", "valgrind"], check=True)
    keep = args.keep or tempfile.mkdtemp(prefix="mg-instructions-")
    os.makedirs(keep, exist_ok=True)
    for i, b in enumerate(args.binaries):
        b = os.path.abspath(b)
        out = os.path.join(keep, f"callgrind-{i}-{os.path.basename(b)}-{args.kind}-{args.workload}")
        total, calls, dump = measure(b, args.kind, args.workload, args.seconds, out,
                                     args.model_bin if args.kind in COUNTED_BY_WRK else None)
        if calls == 0:
            sys.exit(f"{b}: no call completed")
        print(f"{b} ({args.kind} {args.workload}): {total:,} instructions / {calls:,} calls = "
              f"{total / calls:,.0f} per call" + (f" (dump: {dump})" if args.keep else ""), flush=True)
    if not args.keep:
        shutil.rmtree(keep)


if __name__ == "__main__":
    main()
