#!/usr/bin/env bash
# Install the Debian packages the build and tests need but this machine lacks,
# in one non-interactive apt run (`apt-get update` first). Quick no-op when
# nothing is missing. Used by `make deps` and .ci/run.
#
#   scripts/system-deps.sh            (PYTHON=python3 by default)
#   scripts/system-deps.sh wrk nginx  (also these tools, for loadtest/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}

need=()
command -v make >/dev/null 2>&1 || need+=(make)
command -v cmake >/dev/null 2>&1 || need+=(cmake) # pingora's zlib-ng build
# TLS: openssl-sys links the system libssl (OPENSSL_NO_VENDOR in .cargo/config.toml);
# upstream pools without their own CA verify against the system roots.
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev pkg-config)
[[ -e /etc/ssl/certs/ca-certificates.crt ]] || need+=(ca-certificates)
# Debian's python3 creates venvs with pip only once python3-venv is installed
# (ensurepip lives there); other Pythons (pyenv, python.org) have it built in.
if [[ ! -x .venv/bin/pip ]] && ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
    need+=(python3-venv)
fi
# Extra tools named on the command line (the package is named like the tool).
for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || need+=("$tool")
done
((${#need[@]})) || exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: no apt-get here; install these yourself: ${need[*]}" >&2
    exit 1
fi
if [[ $(id -u) -eq 0 ]]; then
    as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo env)
else
    echo "system-deps: not root and no sudo; install these yourself: ${need[*]}" >&2
    exit 1
fi
echo "==> installing Debian packages: ${need[*]}"
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
