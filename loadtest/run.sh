#!/usr/bin/env bash
# modelgate vs nginx load test in one command, on a fresh Debian machine too:
# installs wrk, nginx, openssl (and python3-venv, cmake... via scripts/system-deps.sh),
# the Python venv with loadtest/requirements.txt (matplotlib), builds the
# release binary only if it is missing, raises the open-file limit, then runs
# loadtest/vs_nginx.py with every argument passed through.
#
#   loadtest/run.sh                          3 rounds × 10 s, json, sse and rate
#   loadtest/run.sh --quick                  smoke test (~1 minute; the first run also installs oha, a few minutes)
#   loadtest/run.sh --rounds 1 --seconds 5 --sweep 1,1000,10000
#   loadtest/run.sh --workloads none --sweep 1000,5000
#   loadtest/run.sh --workloads https,handshake  HTTPS: keep-alive and handshake rates
#   loadtest/run.sh --workloads rate --rate 5000  latency added at a fixed rate (oha, open loop;
#                                              installed into loadtest/.tools with cargo if missing)
#   loadtest/run.sh --floors                 also plain Pingora 0.9.1 and the floor under passthrough
#                                              (loadtest/floor/; the first run builds them, a few minutes)
#
# Results: loadtest/results/latest.md and *.png (see loadtest/vs_nginx.py --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}

# openssl: the CLI makes the HTTPS workloads' test certificate.
PYTHON=$python bash scripts/system-deps.sh wrk nginx openssl

# The same venv as `make deps` (tests/requirements.txt); a stamp file redoes the
# install when loadtest/requirements.txt changes.
test -x .venv/bin/pip || "$python" -m venv --clear .venv
stamp=.venv/.loadtest-requirements-installed
if [[ ! -f $stamp || loadtest/requirements.txt -nt $stamp ]]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r loadtest/requirements.txt
    touch "$stamp"
fi

if [[ ! -x target/release/modelgate ]]; then
    cargo build --release
fi

# Every open stream costs the proxy two sockets (client + upstream) and wrk and
# the demo model one each; the proxies and the demo model are children of
# vs_nginx.py and inherit this limit. Raising the hard limit needs root with
# CAP_SYS_RESOURCE (often missing in containers): then take the hard limit as is.
hard=$(ulimit -Hn)
if ! ulimit -n 1048576 2>/dev/null; then
    ulimit -n "$hard"
fi
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt 1048576 ]]; then
    echo "run.sh: open files limited to $(ulimit -n) (hard limit); a proxy can hold about" \
        "$((($(ulimit -n) - 256) / 2)) open streams" >&2
fi

exec .venv/bin/python loadtest/vs_nginx.py "$@"
