#!/usr/bin/env bash
# Validate the monitoring files with real tools:
#   deploy/grafana/modelgate.json               (Grafana dashboard)
#   deploy/prometheus/modelgate-rules.yaml      (Prometheus recording + alert rules)
#   deploy/prometheus/modelgate-rules.test.yaml (promtool unit tests of the rules)
#
#   scripts/check-monitoring.sh
#
# 1. parses the dashboard JSON and checks its structure (schemaVersion, the
#    DS_PROMETHEUS data source variable, every query on it, unique ids, grid);
# 2. checks that every metric name in any dashboard query, template variable,
#    rule or rule test is one the gateway exports (the list in the Python
#    below, cross-checked with src/metrics.rs when present), and every label
#    in a selector is one of that metric's labels; fails naming the culprit;
# 3. `promtool check rules` on the rules file, and on the dashboard's queries
#    (written out as recording rules, Grafana variables substituted), so
#    PromQL syntax errors in the dashboard are caught too;
# 4. `promtool test rules` on the unit tests.
#
# promtool: $PROMTOOL, else `promtool` on PATH, else a copy cached in
# ${XDG_CACHE_HOME:-~/.cache}/modelgate/promtool, else taken from Debian's
# `prometheus` package: the .deb (~19 MB) is downloaded with `apt-get download`
# and only /usr/bin/promtool is unpacked into that cache. The package is not
# installed: installing it would pull 11 JavaScript/font packages and register
# (and, outside containers, start) a Prometheus server. `apt-get update` runs
# (as root, or with sudo) only if apt does not know the package yet.
set -euo pipefail
shopt -s inherit_errexit # find_promtool runs in $(...)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}

dashboard=deploy/grafana/modelgate.json
rules=deploy/prometheus/modelgate-rules.yaml
rule_tests=deploy/prometheus/modelgate-rules.test.yaml
cache=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/modelgate

say() { printf '==> %s\n' "$*"; }

# Print the path of a working promtool, fetching it if needed.
find_promtool() {
    if [[ -n ${PROMTOOL:-} ]]; then
        echo "$PROMTOOL"
        return
    fi
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
        return
    fi
    if [[ -x $cache/promtool ]]; then
        echo "$cache/promtool"
        return
    fi
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        echo "check-monitoring: promtool not found and no apt-get/dpkg-deb to fetch it:" \
            "install Prometheus's promtool, or set PROMTOOL=/path/to/promtool" >&2
        return 1
    fi
    local as_root=() apt_opts=() tmp
    if [[ $(id -u) -eq 0 ]]; then
        as_root=(env)
        apt_opts=(-o APT::Sandbox::User=root) # download into our root-owned temp dir
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo env)
    fi
    tmp=$workdir/deb # removed on exit
    mkdir -p "$tmp"
    say "fetching promtool from Debian's prometheus package (download only, not installed)" >&2
    if ! apt-cache show prometheus >/dev/null 2>&1 ||
        ! (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq prometheus 2>/dev/null); then
        if ((${#as_root[@]} == 0)); then
            echo "check-monitoring: apt does not know the prometheus package and this is" \
                "not root, without sudo: run apt-get update as root, or set PROMTOOL" >&2
            return 1
        fi
        "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -qq
        (cd "$tmp" && apt-get "${apt_opts[@]}" download -qq prometheus)
    fi
    dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -xf - -C "$tmp" ./usr/bin/promtool
    mkdir -p "$cache"
    mv "$tmp/usr/bin/promtool" "$cache/promtool.tmp.$$"
    mv -f "$cache/promtool.tmp.$$" "$cache/promtool"
    echo "$cache/promtool"
}

failed=()
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
dashboard_rules=$workdir/dashboard-queries.rules.json

# ---------------------------------------------------------------- 1 + 2
say "dashboard structure and metric names ($dashboard, $rules, $rule_tests)"
if ! "$python" - "$dashboard" "$rules" "$rule_tests" "$dashboard_rules" <<'PY'; then
"""Stdlib-only checker: dashboard structure, metric and label names."""
import difflib
import json
import os
import re
import sys

dashboard_path, rules_path, tests_path, out_path = sys.argv[1:5]

# What the gateway exports (src/metrics.rs): name -> (type, labels).
# Histograms are exported as name_bucket{le}, name_sum and name_count.
EXPORTED = {
    "modelgate_requests_total": ("counter", ["route", "status", "client"]),
    "modelgate_request_duration_seconds": ("histogram", ["route"]),
    "modelgate_time_to_first_byte_seconds": ("histogram", ["route"]),
    "modelgate_upstream_errors_total": ("counter", ["upstream", "kind"]),
    "modelgate_tls_handshakes_total": ("counter", ["listener", "version"]),
    "modelgate_tls_client_cert_refused_total": ("counter", ["listener"]),
    "modelgate_tls_certificate_expiry_seconds": ("gauge", ["listener", "name"]),
    "modelgate_tls_reloads_total": ("counter", ["listener", "result"]),
    "modelgate_in_flight_requests": ("gauge", []),
    "modelgate_upstream_host_healthy": ("gauge", ["upstream", "host"]),
    "modelgate_masked_total": ("counter", ["entity", "direction"]),
    "modelgate_mask_holdback_overflows_total": ("counter", []),
    "modelgate_audit_queue_depth": ("gauge", []),
    "modelgate_audit_written_total": ("counter", ["sink"]),
    "modelgate_audit_dropped_total": ("counter", ["reason"]),
    "modelgate_audit_refused_total": ("counter", []),
    "modelgate_audit_sink_errors_total": ("counter", ["sink"]),
    "modelgate_policy_decisions_total": ("counter", ["route", "rule", "action"]),
    "modelgate_rate_limited_total": ("counter", ["kind"]),
    "modelgate_rate_limit_store_errors": ("gauge", []),
    "modelgate_approvals_total": ("counter", ["event"]),
    "modelgate_approvals_pending": ("gauge", []),
    "modelgate_approvals_held": ("gauge", []),
    "modelgate_approval_webhook_deliveries": ("gauge", ["outcome"]),
    "modelgate_drift_score": ("gauge", ["route", "model", "signal"]),
    "modelgate_drift_alerting": ("gauge", ["route", "model", "signal"]),
    "modelgate_drift_alerts_total": ("counter", ["route", "model", "signal"]),
    "modelgate_drift_baseline_calls": ("gauge", ["route", "model"]),
    "modelgate_drift_fingerprint_changes_total": ("counter", ["route", "model", "field"]),
    "modelgate_upstream_models_changes_total": ("counter", ["upstream", "host"]),
    "modelgate_upstream_models_check_errors_total": ("counter", ["upstream", "host"]),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
SYNTHETIC = {"up": []}  # Prometheus's own per-target series

series_labels = {}  # every exposed series name -> its labels
for name, (kind, labels) in EXPORTED.items():
    if kind == "histogram":
        series_labels[name + "_bucket"] = labels + ["le"]
        series_labels[name + "_sum"] = labels
        series_labels[name + "_count"] = labels
    else:
        series_labels[name] = labels
for name, labels in SYNTHETIC.items():
    series_labels[name] = labels
ALL_LABELS = set(TARGET_LABELS) | {"le", "__name__"}
for labels in series_labels.values():
    ALL_LABELS.update(labels)

errors = []
notes = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


# ------------------------------------------------------------------ PromQL
AGGREGATORS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
               "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<dur>(?:\d+(?:ms|[smhdwy]))+\b)
  | (?P<num>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>==|!=|<=|>=|=~|!~|[-+*/%^<>=(){}\[\],@:])
""", re.X)


def tokenize(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def skip_to(tokens, i, close):
    """Index just past the token `close` matching the opener at tokens[i]."""
    opener, depth = tokens[i][1], 0
    for j in range(i, len(tokens)):
        if tokens[j] == ("op", opener):
            depth += 1
        elif tokens[j] == ("op", close):
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError(f"unbalanced {opener!r}")


def scan(expr):
    """(metric names, [(metric or None, label)] used in selectors and label lists)."""
    tokens = tokenize(expr)
    metrics, labels = [], []
    last_metric = None
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if (kind, text) == ("op", "{"):
            end = skip_to(tokens, i, "}")
            owner = last_metric if i > 0 and tokens[i - 1] == ("ident", last_metric) else None
            inner = tokens[i + 1:end - 1]
            for k, (ik, itext) in enumerate(inner):
                if ik == "ident" and k + 1 < len(inner) and inner[k + 1][0] == "op" \
                        and inner[k + 1][1] in ("=", "!=", "=~", "!~"):
                    labels.append((owner, itext))
            i = end
            continue
        if (kind, text) == ("op", "["):
            i = skip_to(tokens, i, "]")
            continue
        if kind == "ident":
            low = text.lower()
            if low in LABEL_LIST_KEYWORDS:
                if nxt == ("op", "("):
                    end = skip_to(tokens, i + 1, ")")
                    labels += [(None, t) for k, t in tokens[i + 2:end - 1] if k == "ident"]
                    i = end
                else:
                    i += 1
                continue
            if low in KEYWORDS or nxt == ("op", "(") or (
                    low in AGGREGATORS and nxt[0] == "ident" and nxt[1].lower() in ("by", "without")):
                i += 1
                continue
            metrics.append(text)
            last_metric = text
        i += 1
    return metrics, labels


used = set()  # every name any query, rule or test uses


def check_expr(where, expr, allowed_extra=(), recorded=()):
    try:
        metrics, labels = scan(expr)
    except ValueError as e:
        err(where, f"{e} in {expr!r}")
        return []
    used.update(metrics)
    for name in metrics:
        if name in series_labels or name in allowed_extra:
            continue
        if name in recorded:
            err(where, f"uses the recording rule {name!r}: the dashboard must work without "
                       f"the rules file, query the gateway's own metrics")
            continue
        if EXPORTED.get(name, ("",))[0] == "histogram":
            err(where, f"histogram {name!r} has no series of its own: use {name}_bucket, "
                       f"_sum or _count")
            continue
        hint = difflib.get_close_matches(name, list(series_labels) + list(allowed_extra), n=1)
        err(where, f"unknown metric {name!r}: the gateway does not export it"
                   + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    for owner, label in labels:
        if owner in series_labels:
            ok = series_labels[owner] + sorted(TARGET_LABELS) + ["__name__"]
            if label not in ok:
                err(where, f"metric {owner!r} has no label {label!r} (it has: {', '.join(ok)})")
        elif label not in ALL_LABELS and owner not in allowed_extra:
            err(where, f"label {label!r} is on no metric the gateway exports")
    return metrics


# ------------------------------------------------------------------ YAML
def yaml_values(path, key):
    """(line number, value) of every `key:` in a YAML file: plain, quoted or
    block (| >) scalars. Enough for rule files; promtool parses them for real."""
    with open(path) as f:
        lines = f.read().split("\n")
    out = []
    pat = re.compile(r"^(\s*(?:-\s+)?)" + re.escape(key) + r":(?:\s+(.*))?$")
    i = 0
    while i < len(lines):
        m = pat.match(lines[i])
        if not m:
            i += 1
            continue
        indent, value = len(m.group(1)), (m.group(2) or "").strip()
        start = i + 1
        i += 1
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            out.append((start, " ".join(b for b in block if b)))
        elif value[:1] == "'":
            out.append((start, value[1:value.rindex("'")].replace("''", "'")))
        elif value[:1] == '"':
            quoted = value[:value.rindex('"') + 1]
            try:
                out.append((start, json.loads(quoted)))
            except ValueError:  # a YAML escape JSON lacks: close enough for names
                out.append((start, quoted[1:-1]))
        else:
            value = re.sub(r"\s+#.*$", "", value)
            while i < len(lines) and lines[i].strip() and \
                    len(lines[i]) - len(lines[i].lstrip()) > indent and \
                    not re.match(r"\s*[\w-]+:(\s|$)", lines[i]):
                value += " " + lines[i].strip()  # multi-line plain scalar
                i += 1
            out.append((start, value))
    return out


for path in (rules_path, tests_path):
    if not os.path.exists(path):
        sys.exit(f"check-monitoring: {path}: missing")
recorded = {v for _, v in yaml_values(rules_path, "record")}

# ------------------------------------------------------------------ dashboard
GRAFANA_RANGES = {"__rate_interval", "__interval", "__range", "__auto_interval"}
VAR_RE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)(?::[^\]]*)?\]\]")


def substitute(expr, variables, where):
    """Grafana variables -> values promtool accepts; unknown ones are errors."""
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_RANGES:
            return "5m"
        if name in ("__range_s", "__interval_ms", "__range_ms"):
            return "300"
        if name in variables:
            return ".*"
        err(where, f"unknown template variable ${name}")
        return ".*"
    return VAR_RE.sub(repl, expr)


try:
    with open(dashboard_path) as f:
        dash = json.load(f)
except (OSError, ValueError) as e:
    sys.exit(f"check-monitoring: {dashboard_path}: not valid JSON: {e}")

D = dashboard_path
if dash.get("schemaVersion") != 39:
    err(D, f"schemaVersion is {dash.get('schemaVersion')!r}, expected 39")
for key in ("uid", "title"):
    if not dash.get(key):
        err(D, f"no {key}")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
ds = variables.get("DS_PROMETHEUS")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    err(D, "no data source template variable DS_PROMETHEUS (type datasource, query prometheus)")
DS_UID = "${DS_PROMETHEUS}"

dashboard_queries = []  # (where, record name for promtool, substituted expr)
for name in ("route", "model"):
    v = variables.get(name)
    if not v or v.get("type") != "query":
        err(D, f"no query template variable {name!r}")
for name, v in variables.items():
    if v.get("type") != "query":
        continue
    where = f"{D}: variable ${name}"
    if (v.get("datasource") or {}).get("uid") != DS_UID:
        err(where, f"data source is not {DS_UID}")
    q = v.get("query")
    q = q.get("query", "") if isinstance(q, dict) else (q or "")
    m = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*(\w+)\s*\)\s*", q, re.S)
    if not m:
        err(where, f"query {q!r} is not label_values(selector, label)")
        continue
    selector, label = m.groups()
    selector = substitute(selector, variables, where)
    for metric in check_expr(where, selector, recorded=recorded):
        if metric in series_labels and label not in series_labels[metric] + sorted(TARGET_LABELS):
            err(where, f"metric {metric!r} has no label {label!r}")
    dashboard_queries.append((where, f"dashboard:variable_{name}", selector))


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels") or [])


ids, boxes = {}, []
n_panels = 0
for p in walk(dash.get("panels", [])):
    title = p.get("title", "?")
    pid = p.get("id")
    where = f"{D}: panel {title!r} (id {pid})"
    if pid in ids:
        err(where, f"duplicate panel id (also {ids[pid]!r})")
    ids[pid] = title
    g = p.get("gridPos") or {}
    if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
        err(where, "no gridPos x/y/w/h")
    elif g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24:
        err(where, f"gridPos {g} is outside the 24-column grid")
    else:
        for other, og in boxes:
            if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"]
                    and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                err(where, f"overlaps panel {other!r}")
        boxes.append((title, g))
    if p.get("type") == "row":
        continue
    n_panels += 1
    if (p.get("datasource") or {}).get("uid") != DS_UID:
        err(where, f"data source is not {DS_UID}")
    targets = p.get("targets") or []
    if not targets:
        err(where, "no queries")
    refs = set()
    for t in targets:
        ref = t.get("refId")
        twhere = f"{where} query {ref}"
        if ref in refs:
            err(twhere, "duplicate refId")
        refs.add(ref)
        if (t.get("datasource") or {}).get("uid") != DS_UID:
            err(twhere, f"data source is not {DS_UID}")
        expr = t.get("expr", "")
        if not expr.strip():
            err(twhere, "empty expr")
            continue
        expr = substitute(expr, variables, twhere)
        check_expr(twhere, expr, recorded=recorded)
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            if label not in ALL_LABELS:
                err(twhere, f"legend uses label {label!r}, on no metric the gateway exports")
        dashboard_queries.append((twhere, f"dashboard:panel_{pid}_{ref}", expr))

# ------------------------------------------------------------------ rules
alerts = yaml_values(rules_path, "alert")
exprs = yaml_values(rules_path, "expr")
if len(exprs) != len(recorded) + len(alerts):
    err(rules_path, f"found {len(exprs)} exprs for {len(recorded)} recording and "
                    f"{len(alerts)} alerting rules: the checker misread the file")
for line, expr in exprs:
    check_expr(f"{rules_path}:{line}", expr, allowed_extra=recorded)
for line, value in yaml_values(rules_path, "summary") + yaml_values(rules_path, "description"):
    for label in re.findall(r"\$labels\.(\w+)", value):
        if label not in ALL_LABELS:
            err(f"{rules_path}:{line}", f"annotation uses label {label!r}, on no metric the "
                                        f"gateway exports")
for line, severity in yaml_values(rules_path, "severity"):
    if severity not in ("critical", "warning", "info"):
        err(f"{rules_path}:{line}", f"severity {severity!r} is not critical, warning or info")
n_rule_exprs = len(exprs)
# The tests' synthetic series and expected samples must use real names too.
for key in ("series", "labels", "expr"):
    for line, value in yaml_values(tests_path, key):
        check_expr(f"{tests_path}:{line}", value, allowed_extra=recorded)

# ------------------------------------------------------------------ src/metrics.rs
# The list above is the contract; flag drift from the gateway's source.
src = "src/metrics.rs"
if os.path.exists(src):
    with open(src) as f:
        text = f.read()
    defined = {"modelgate_" + n for n in re.findall(
        r'(?:HistogramOpts|Opts|(?:Int)?(?:Counter|Gauge))::new\(\s*"([a-z][a-z0-9_]*)"', text)}
    if defined:
        for name in sorted(set(EXPORTED) - defined):
            if any(s == name or s.startswith(name + "_") for s in used):
                err(src, f"does not define {name}, which the dashboard or rules query")
            else:
                notes.append(f"{name} is in the checker's list but not in {src}")
        for name in sorted(defined - set(EXPORTED)):
            notes.append(f"{src} defines {name}: add it to the list in scripts/check-monitoring.sh")

# ------------------------------------------------------------------ report
# The dashboard's queries as recording rules, for promtool to parse (also
# when a name is wrong: a syntax error is worth reporting at the same time).
rules = [{"record": record, "expr": expr} for _, record, expr in dashboard_queries]
with open(out_path, "w") as f:
    json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, indent=1)
if not errors:
    on_dashboard = set()
    for _, _, expr in dashboard_queries:
        on_dashboard.update(scan(expr)[0])
    missing = [n for n, (kind, _) in EXPORTED.items()
               if not any(s == n or s.startswith(n + "_") for s in on_dashboard)]
    if missing:
        notes.append("not on the dashboard: " + ", ".join(missing))

for n in notes:
    print(f"    note: {n}")
if errors:
    for e in errors:
        print(f"check-monitoring: {e}", file=sys.stderr)
    sys.exit(1)
print(f"    dashboard: {n_panels} panels, {len(dashboard_queries)} queries (incl. template "
      f"variables); rules: {n_rule_exprs} exprs; every metric and label name is exported")
PY
    failed+=("dashboard/metric names")
fi

# ---------------------------------------------------------------- 3 + 4
promtool=$(find_promtool)
say "promtool: $promtool ($("$promtool" --version 2>&1 | head -n1))"

say "promtool check rules $rules"
"$promtool" check rules "$rules" || failed+=("promtool check rules")

if [[ -s $dashboard_rules ]]; then
    say "promtool check rules <dashboard queries as recording rules>"
    # Rule dashboard:panel_<id>_<refId> is query <refId> of panel <id>.
    out=$("$promtool" check rules "$dashboard_rules" 2>&1) || failed+=("dashboard PromQL")
    printf '%s\n' "$out" | sed -E "s|$dashboard_rules(: [0-9]+:[0-9]+)?|$dashboard (queries)|"
fi

say "promtool test rules $rule_tests"
"$promtool" test rules "$rule_tests" || failed+=("promtool test rules")

if ((${#failed[@]})); then
    echo "check-monitoring: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "check-monitoring: OK"
