//! Cross-field checks on a parsed [`Config`]: things the schema alone cannot
//! express (names that must exist, addresses that must parse, globs that must
//! compile). Each error names the key path and what was expected.

use super::{Config, ConfigError};
use http::{HeaderName, HeaderValue};
use std::collections::HashSet;
use std::net::SocketAddr;

pub fn validate(c: &Config) -> Result<(), ConfigError> {
    c.server_conf()?;

    validate_listeners(c)?;
    if let Some(admin) = &c.admin {
        socket_addr("admin.listen", &admin.listen)?;
        if c.listen.contains(&admin.listen) || c.listeners.iter().any(|l| l.address == admin.listen)
        {
            return Err(ConfigError::at(
                "admin.listen",
                "must differ from every `listen` and `listeners` address (the admin port is separate)",
            ));
        }
        if admin.token.as_ref().is_some_and(|t| t.0.trim().is_empty()) {
            return Err(ConfigError::at(
                "admin.token",
                "is empty (set a token or remove the key)",
            ));
        }
    }
    if c.limits.max_request_body_bytes == 0 {
        return Err(ConfigError::at(
            "limits.max_request_body_bytes",
            "must be greater than 0",
        ));
    }

    let mut names = HashSet::new();
    for (i, client) in c.clients.iter().enumerate() {
        let at = format!("clients[{i}]");
        if client.name.trim().is_empty() {
            return Err(ConfigError::at(format!("{at}.name"), "must not be empty"));
        }
        if !names.insert(client.name.as_str()) {
            return Err(ConfigError::at(
                format!("{at}.name"),
                format!("duplicate client name `{}`", client.name),
            ));
        }
        if let Some(k) = &client.key_sha256 {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::at(
                    format!("{at}.key_sha256"),
                    "expected 64 hex characters, the SHA-256 of the key (`modelgate hash-key` prints it)",
                ));
            }
        }
        match &client.cert {
            None if client.key_sha256.is_none() => {
                return Err(ConfigError::at(
                    &at,
                    "needs `key_sha256` (an API key), `cert` (a client certificate), or both",
                ));
            }
            None => {}
            Some(m) => {
                cert_match(&at, m)?;
                let verifying: Vec<String> = c
                    .listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()))
                    .map(|(i, l)| l.name_or_default(i))
                    .collect();
                match (verifying.len(), m.listeners.is_empty()) {
                    (0, _) => {
                        return Err(ConfigError::at(
                            format!("{at}.cert"),
                            "no listener asks for client certificates (set `listeners[].tls.client_auth`)",
                        ))
                    }
                    (1, true) => {}
                    (_, true) => {
                        return Err(ConfigError::at(
                            format!("{at}.cert.listeners"),
                            format!(
                                "required: several listeners verify client certificates ({}), \
                                 each against its own CA; name the ones whose certificates may be this client",
                                verifying.join(", ")
                            ),
                        ))
                    }
                    _ => {}
                }
                if let Some(l) = m.listeners.iter().find(|l| !verifying.contains(l)) {
                    return Err(ConfigError::at(
                        format!("{at}.cert.listeners"),
                        format!("`{l}` is not a listener that verifies client certificates"),
                    ));
                }
                if let Some(j) = c.clients[..i]
                    .iter()
                    .position(|o| o.cert.as_ref().is_some_and(|o| same_cert_match(o, m)))
                {
                    return Err(ConfigError::at(
                        format!("{at}.cert"),
                        format!("the same certificate match as clients[{j}] (on a listener both accept)"),
                    ));
                }
            }
        }
    }

    if c.upstreams.is_empty() {
        return Err(ConfigError::at(
            "upstreams",
            "at least one upstream pool is required",
        ));
    }
    for (name, up) in &c.upstreams {
        let at = format!("upstreams.{name}");
        if up.hosts.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.hosts"),
                "at least one host:port is required",
            ));
        }
        for (i, host) in up.hosts.iter().enumerate() {
            let ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ConfigError::at(
                    format!("{at}.hosts[{i}]"),
                    format!(
                        "`{host}` is not host:port (e.g. 10.0.0.5:8000 or vllm.models.svc:8000)"
                    ),
                ));
            }
        }
        if up.credential.is_some() && up.credential_file.is_some() {
            return Err(ConfigError::at(
                &at,
                "set either `credential` or `credential_file`, not both",
            ));
        }
        if let Some(cred) = &up.credential {
            if HeaderValue::from_str(&cred.0).is_err() {
                // Never echo the value: it is a secret.
                return Err(ConfigError::at(
                    format!("{at}.credential"),
                    "is not a valid HTTP header value (control characters or non-ASCII?)",
                ));
            }
        }
        if HeaderName::from_bytes(up.credential_header.as_bytes()).is_err() {
            return Err(ConfigError::at(
                format!("{at}.credential_header"),
                format!("`{}` is not a valid HTTP header name", up.credential_header),
            ));
        }
        if !up.health_check.path.starts_with('/') {
            return Err(ConfigError::at(
                format!("{at}.health_check.path"),
                "must start with `/`",
            ));
        }
        if up.health_check.interval.is_zero() {
            return Err(ConfigError::at(
                format!("{at}.health_check.interval"),
                "must be greater than 0",
            ));
        }
        if let Some(tls) = &up.tls {
            validate_upstream_tls(&format!("{at}.tls"), tls, &up.hosts)?;
        }
    }

    if c.routes.is_empty() {
        return Err(ConfigError::at("routes", "at least one route is required"));
    }
    let mut route_names = HashSet::new();
    // Without JWT every caller is a configured client, so a limit naming
    // anyone else is a typo that would silently limit nobody.
    if let (Some(rl), None) = (&c.rate_limits, &c.identity.jwt) {
        if let Some(name) = rl
            .clients
            .keys()
            .find(|n| !c.clients.iter().any(|cl| &cl.name == *n))
        {
            return Err(ConfigError::at(
                format!("rate_limits.clients.{name}"),
                "unknown client (not in `clients`)",
            ));
        }
        if let Some(g) = rl
            .groups
            .keys()
            .find(|g| !c.clients.iter().any(|cl| cl.groups.contains(g)))
        {
            return Err(ConfigError::at(
                format!("rate_limits.groups.{g}"),
                "unknown group (no client in `clients` has it)",
            ));
        }
    }
    if let Some(a) = &c.approval {
        a.validate()?;
        if c.admin.is_none() {
            return Err(ConfigError::at(
                "approval",
                "needs an `admin:` listener (approvers decide through its API and console)",
            ));
        }
        if c.identity.jwt.is_none() {
            if let Some(g) = a
                .approver_groups
                .iter()
                .find(|g| !c.clients.iter().any(|cl| cl.groups.contains(g)))
            {
                return Err(ConfigError::at(
                    "approval.approver_groups",
                    format!("unknown group `{g}` (no client in `clients` has it)"),
                ));
            }
        }
    }
    if let Some(name) = c.policies.keys().find(|n| n.contains('#')) {
        return Err(ConfigError::at(
            format!("policies.{name}"),
            "a policy name cannot contain `#`",
        ));
    }
    for (i, r) in c.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !r.path_prefix.starts_with('/') {
            return Err(ConfigError::at(
                format!("{at}.path_prefix"),
                "must start with `/`",
            ));
        }
        if !c.upstreams.contains_key(&r.upstream) {
            let known: Vec<&str> = c.upstreams.keys().map(String::as_str).collect();
            return Err(ConfigError::at(
                format!("{at}.upstream"),
                format!(
                    "unknown upstream `{}` (defined: {})",
                    r.upstream,
                    known.join(", ")
                ),
            ));
        }
        if !c.policies.contains_key(&r.policy) && r.policy != "default" {
            let mut known: Vec<&str> = c.policies.keys().map(String::as_str).collect();
            if !known.contains(&"default") {
                known.push("default");
            }
            return Err(ConfigError::at(
                format!("{at}.policy"),
                format!(
                    "unknown policy `{}` (defined: {})",
                    r.policy,
                    known.join(", ")
                ),
            ));
        }
        if let Some(models) = &r.model {
            for (j, glob) in models.to_vec().iter().enumerate() {
                if let Err(e) = globset::Glob::new(glob) {
                    return Err(ConfigError::at(
                        format!("{at}.model[{j}]"),
                        format!("`{glob}` is not a valid glob: {}", e.kind()),
                    ));
                }
            }
        }
        if let Some(name) = &r.name {
            if !route_names.insert(name.as_str()) {
                return Err(ConfigError::at(
                    format!("{at}.name"),
                    format!("duplicate route name `{name}`"),
                ));
            }
        }
    }
    let masks = crate::mask::MaskEngine::build(c)?;
    if let Some(d) = &c.drift {
        d.validate(masks.audit_rules().detector.names())?;
    }
    if c.drift.is_some() && c.audit.is_none() {
        return Err(ConfigError::at(
            "drift",
            "needs `audit:` (drift reads the answers the audit writer reassembles, and its alerts are audit records)",
        ));
    }
    if let Some(audit) = &c.audit {
        validate_audit(audit)?;
    }
    Ok(())
}

fn validate_audit(a: &super::AuditConfig) -> Result<(), ConfigError> {
    use super::SinkConfig;
    if a.sinks.is_empty() {
        return Err(ConfigError::at(
            "audit.sinks",
            "at least one sink is required (e.g. `- {kind: file, path: /var/log/modelgate/audit.jsonl}`)",
        ));
    }
    if a.queue_capacity == 0 {
        return Err(ConfigError::at(
            "audit.queue_capacity",
            "must be greater than 0",
        ));
    }
    if a.max_body_bytes == 0 {
        return Err(ConfigError::at(
            "audit.max_body_bytes",
            "must be greater than 0 (use `bodies: none` to store no bodies)",
        ));
    }
    if a.hmac_key.as_ref().is_some_and(|k| k.0.is_empty()) {
        return Err(ConfigError::at(
            "audit.hmac_key",
            "is empty (set a key or remove the entry)",
        ));
    }
    let mut paths = HashSet::new();
    for (i, sink) in a.sinks.iter().enumerate() {
        let at = format!("audit.sinks[{i}]");
        match sink {
            SinkConfig::File(f) => {
                if f.path.trim().is_empty() {
                    return Err(ConfigError::at(format!("{at}.path"), "must not be empty"));
                }
                if !paths
                    .insert(std::path::absolute(&f.path).unwrap_or_else(|_| f.path.clone().into()))
                {
                    return Err(ConfigError::at(
                        format!("{at}.path"),
                        format!("`{}` is already used by another file sink", f.path),
                    ));
                }
            }
            SinkConfig::Elasticsearch(e) => {
                crate::audit::elastic::parse_url(&e.url)
                    .map_err(|m| ConfigError::at(format!("{at}.url"), m))?;
                if e.index.is_empty()
                    || e.index.starts_with(['_', '-', '+'])
                    || e.index
                        .bytes()
                        .any(|b| b.is_ascii_uppercase() || b"\\/*?\"<>| ,#:".contains(&b))
                {
                    return Err(ConfigError::at(
                        format!("{at}.index"),
                        format!(
                            "`{}` is not a valid index name (lowercase, no \\/*?\"<>| ,#:)",
                            e.index
                        ),
                    ));
                }
                if e.batch_size == 0 || e.max_buffer < e.batch_size {
                    return Err(ConfigError::at(
                        format!("{at}.batch_size"),
                        "must be greater than 0 and at most `max_buffer`",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `listen` and `listeners`: addresses parse and are unique, names are
/// unique, h2c is consistent (Pingora sets it per proxy service).
fn validate_listeners(c: &Config) -> Result<(), ConfigError> {
    if c.listen.is_empty() && c.listeners.is_empty() {
        return Err(ConfigError::at(
            "listen",
            "at least one address is required (e.g. [\"0.0.0.0:8080\"]), or a `listeners` entry",
        ));
    }
    let poll = c.tls.reload_check_interval;
    if !poll.is_zero() && poll < std::time::Duration::from_millis(100) {
        return Err(ConfigError::at(
            "tls.reload_check_interval",
            "at least 100ms (each check reads every certificate file's metadata), or 0s for SIGHUP only",
        ));
    }
    let mut addrs = HashSet::new();
    for (i, addr) in c.listen.iter().enumerate() {
        let at = format!("listen[{i}]");
        if !addrs.insert(socket_addr(&at, addr)?) {
            return Err(ConfigError::at(at, format!("`{addr}` is listed twice")));
        }
    }
    let mut names = HashSet::new();
    let mut plain_h2c = None;
    for (i, l) in c.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        if !addrs.insert(socket_addr(&format!("{at}.address"), &l.address)?) {
            return Err(ConfigError::at(
                format!("{at}.address"),
                format!("`{}` is already used by another listener", l.address),
            ));
        }
        let name = l.name_or_default(i);
        if name.trim().is_empty() || !names.insert(name.clone()) {
            return Err(ConfigError::at(
                format!("{at}.name"),
                format!("`{name}` is empty or used by another listener"),
            ));
        }
        let Some(tls) = &l.tls else {
            if *plain_h2c.get_or_insert(l.h2c) != l.h2c {
                return Err(ConfigError::at(
                    format!("{at}.h2c"),
                    "must be the same on every plain listener (Pingora enables h2c per proxy service)",
                ));
            }
            continue;
        };
        if l.h2c {
            return Err(ConfigError::at(
                format!("{at}.h2c"),
                "is for plain listeners; TLS listeners offer HTTP/2 through ALPN (`tls.http2`)",
            ));
        }
        if tls.certificates.is_empty() {
            return Err(ConfigError::at(
                format!("{at}.tls.certificates"),
                "at least one `{cert, key}` pair is required",
            ));
        }
        for (j, pair) in tls.certificates.iter().enumerate() {
            for (key, path) in [("cert", &pair.cert), ("key", &pair.key)] {
                if path.trim().is_empty() {
                    return Err(ConfigError::at(
                        format!("{at}.tls.certificates[{j}].{key}"),
                        "must not be empty",
                    ));
                }
            }
        }
        if let Some(auth) = &tls.client_auth {
            if auth.ca.trim().is_empty() {
                return Err(ConfigError::at(
                    format!("{at}.tls.client_auth.ca"),
                    "must not be empty (a PEM file of the CAs client certificates chain to)",
                ));
            }
            if auth.reject_in_handshake && auth.mode != super::ClientAuthMode::Required {
                return Err(ConfigError::at(
                    format!("{at}.tls.client_auth.reject_in_handshake"),
                    "only applies to `mode: required`",
                ));
            }
        }
    }
    if plain_h2c == Some(true) && !c.listen.is_empty() {
        return Err(ConfigError::at(
            "listen",
            "plain listeners share one h2c setting (Pingora enables h2c per proxy service): \
             move these addresses to `listeners` with `h2c: true`",
        ));
    }
    Ok(())
}

/// `clients[].cert`: exactly one non-empty key.
fn cert_match(at: &str, m: &super::CertMatchConfig) -> Result<(), ConfigError> {
    let set: Vec<&String> = [&m.cn, &m.dns, &m.uri, &m.email]
        .into_iter()
        .flatten()
        .collect();
    match set[..] {
        [v] if !v.trim().is_empty() => Ok(()),
        [_] => Err(ConfigError::at(format!("{at}.cert"), "the value is empty")),
        _ => Err(ConfigError::at(
            format!("{at}.cert"),
            "expected exactly one of `cn`, `dns`, `uri`, `email`",
        )),
    }
}

/// Whether two matches name the same certificates (DNS and e-mail compare
/// without case, as they match) on a listener both accept (none: all).
fn same_cert_match(a: &super::CertMatchConfig, b: &super::CertMatchConfig) -> bool {
    let fold = |v: &Option<String>| v.as_ref().map(|s| s.to_ascii_lowercase());
    let same = a.cn == b.cn
        && a.uri == b.uri
        && fold(&a.dns) == fold(&b.dns)
        && fold(&a.email) == fold(&b.email);
    let overlap = a.listeners.is_empty()
        || b.listeners.is_empty()
        || a.listeners.iter().any(|l| b.listeners.contains(l));
    same && overlap
}

fn validate_upstream_tls(
    at: &str,
    tls: &super::UpstreamTlsConfig,
    hosts: &[String],
) -> Result<(), ConfigError> {
    match &tls.server_name {
        Some(n) if n.trim().is_empty() => {
            // Pingora skips verification for an empty SNI.
            return Err(ConfigError::at(
                format!("{at}.server_name"),
                "must not be empty",
            ));
        }
        Some(_) => {}
        None => {
            if let Some((i, h)) = hosts.iter().enumerate().find(|(_, h)| host_is_ip(h)) {
                return Err(ConfigError::at(
                    format!("{at}.server_name"),
                    format!(
                        "required: hosts[{i}] `{h}` is an IP address, and the certificate is checked against a DNS name"
                    ),
                ));
            }
        }
    }
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        return Err(ConfigError::at(
            at,
            "set both `client_cert` and `client_key`, or neither",
        ));
    }
    for (key, v) in [
        ("ca", &tls.ca),
        ("client_cert", &tls.client_cert),
        ("client_key", &tls.client_key),
        ("alternative_name", &tls.alternative_name),
    ] {
        if v.as_ref().is_some_and(|v| v.trim().is_empty()) {
            return Err(ConfigError::at(format!("{at}.{key}"), "must not be empty"));
        }
    }
    // Names go to OpenSSL as C strings and DNS names: a NUL would panic a
    // connection, an IP literal is no SNI and never matches a DNS SAN.
    for (key, v) in [
        ("server_name", &tls.server_name),
        ("alternative_name", &tls.alternative_name),
    ] {
        let Some(v) = v else { continue };
        if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError::at(
                format!("{at}.{key}"),
                "a DNS name has no spaces or control characters",
            ));
        }
        if v.parse::<std::net::IpAddr>().is_ok() {
            return Err(ConfigError::at(
                format!("{at}.{key}"),
                format!("`{v}` is an IP address; certificates are checked against a DNS name here"),
            ));
        }
    }
    Ok(())
}

/// Whether the host part of `host:port` is an IP literal.
pub(crate) fn host_is_ip(host_port: &str) -> bool {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
}

fn socket_addr(at: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    addr.parse().map_err(|_| {
        ConfigError::at(
            at,
            format!("`{addr}` is not an IP:port address (e.g. 0.0.0.0:8080 or [::]:8080)"),
        )
    })
}
