//! Configuration: loading `modelgate.yaml`, `${VAR}` expansion, the typed
//! schema, and validation with errors that name the key path and what was
//! expected (`modelgate -t -c FILE` prints them).
//!
//! This module turns text into a checked [`Config`]; building runtime objects
//! (client registry, upstream pools, router) from it belongs to their modules.

mod expand;
pub mod schema;
mod validate;

pub use schema::*;

use pingora_core::server::configuration::ServerConf;
use serde_yaml::Value;
use std::fmt;
use std::path::Path;

/// A configuration error: where (key path or file) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub fn at(path: impl fmt::Display, msg: impl fmt::Display) -> Self {
        ConfigError(format!("{path}: {msg}"))
    }
}

/// A URL with its user-info hidden, for logs and errors:
/// `redis://user:secret@host/0` → `redis://***@host/0`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***{}", &rest[at..]);
        }
    }
    url.to_string()
}

/// Reads, expands, parses and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read the file ({e})")))?;
    load_str(&text, &|name| std::env::var(name).ok())
}

/// Parses and validates configuration text, looking variables up with `env`.
pub fn load_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut value: Value =
        serde_yaml::from_str(text).map_err(|e| ConfigError(format!("invalid YAML: {e}")))?;
    if value.is_null() {
        return Err(ConfigError(
            "the file is empty (expected a mapping with at least `listen`, `upstreams` and `routes`)"
                .into(),
        ));
    }
    expand::expand_tree(&mut value, &mut Vec::new(), env).map_err(ConfigError)?;
    let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ConfigError(inner)
        } else {
            ConfigError::at(path, inner)
        }
    })?;
    validate::validate(&config)?;
    Ok(config)
}

impl Config {
    /// Pingora's `ServerConf` from the `server:` section. Unknown keys are
    /// rejected with the list of keys Pingora knows.
    pub fn server_conf(&self) -> Result<ServerConf, ConfigError> {
        let known = match serde_yaml::to_value(ServerConf::default()) {
            Ok(Value::Mapping(m)) => m,
            _ => serde_yaml::Mapping::new(),
        };
        for key in self.server.keys() {
            if !known.contains_key(key) {
                let names: Vec<&str> = known.keys().filter_map(|k| k.as_str()).collect();
                return Err(ConfigError::at(
                    format!("server.{}", key.as_str().unwrap_or("?")),
                    format!(
                        "unknown Pingora server setting (expected one of: {})",
                        names.join(", ")
                    ),
                ));
            }
        }
        let mut conf: ServerConf =
            serde_path_to_error::deserialize(Value::Mapping(self.server.clone()))
                .map_err(|e| ConfigError::at(format!("server.{}", e.path()), e.into_inner()))?;
        if !self.server.contains_key("threads") {
            conf.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        if !self.server.contains_key("work_stealing") {
            // One single-threaded runtime per thread, each connection on a
            // random one: 15% less CPU per proxied request than Tokio's
            // work-stealing runtime in the passthrough load test.
            conf.work_stealing = false;
        }
        Ok(conf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "VLLM_API_KEY").then(|| "sk-upstream".to_string())
    }

    const GOOD: &str = r#"
server: {threads: 2}
listen: ["127.0.0.1:8080"]
admin: {listen: "127.0.0.1:9090", token: "t0ken"}
clients:
  - name: alice
    key_sha256: "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"
    groups: [analysts]
upstreams:
  vllm:
    hosts: ["127.0.0.1:8000"]
    credential: "Bearer ${VLLM_API_KEY}"
routes:
  - {path_prefix: "/", upstream: vllm, policy: default}
policies:
  default: {}
"#;

    #[test]
    fn the_documented_example_loads() {
        let c = load_str(GOOD, &env).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:8080"]);
        let up = &c.upstreams["vllm"];
        assert_eq!(up.credential.as_ref().unwrap().0, "Bearer sk-upstream");
        assert_eq!(c.server_conf().unwrap().threads, 2);
        assert!(!c.server_conf().unwrap().work_stealing);
        // The credential never shows in Debug output.
        assert!(!format!("{c:?}").contains("sk-upstream"));
    }

    fn err(text: &str) -> String {
        load_str(text, &env).unwrap_err().0
    }

    #[test]
    fn errors_name_the_key_path() {
        let e = err(&GOOD.replace("hosts: [", "hostz: ["));
        assert!(
            e.starts_with("upstreams.vllm.hostz: unknown field `hostz`, expected one of `hosts`"),
            "{e}"
        );
        let e = err(&GOOD.replace("threads: 2", "threads: lots"));
        assert!(e.starts_with("server.threads: invalid type"), "{e}");
        let e = err(&GOOD.replace("${VLLM_API_KEY}", "${NOT_SET_ANYWHERE}"));
        assert_eq!(
            e,
            "upstreams.vllm.credential: environment variable `NOT_SET_ANYWHERE` is not set"
        );
        let e = err(&GOOD.replace("upstream: vllm", "upstream: tgi"));
        assert!(
            e.starts_with("routes[0].upstream: unknown upstream `tgi`"),
            "{e}"
        );
        let e = err(&GOOD.replace("2bd806c9", "zz"));
        assert!(e.starts_with("clients[0].key_sha256:"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:8080", "localhost"));
        assert!(e.starts_with("listen[0]:"), "{e}");
        let e = err(&GOOD.replace("policy: default", "policy: strict"));
        assert!(
            e.starts_with("routes[0].policy: unknown policy `strict`"),
            "{e}"
        );
        let e = err("listen: []\n");
        assert!(e.contains("missing field"), "{e}");
    }

    /// GOOD with its `listen` line replaced by `listeners`, and `more` appended.
    fn with_listeners(listeners: &str, more: &str) -> String {
        GOOD.replace(
            "listen: [\"127.0.0.1:8080\"]\n",
            &format!("listeners:\n{listeners}"),
        ) + more
    }

    const TLS_LISTENER: &str = "  - name: public\n    address: \"127.0.0.1:8443\"\n    tls:\n      certificates: [{cert: /etc/c.pem, key: /etc/c.key}]\n";
    const MTLS_LISTENER: &str = "  - name: internal\n    address: \"127.0.0.1:8444\"\n    tls:\n      certificates: [{cert: /etc/c.pem, key: /etc/c.key}]\n      client_auth: {mode: required, ca: /etc/ca.pem}\n";

    #[test]
    fn listeners_are_validated() {
        let c = load_str(&with_listeners(TLS_LISTENER, ""), &env).unwrap();
        assert!(c.listen.is_empty());
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert!(tls.http2);
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(
            c.tls.expiry_warning,
            std::time::Duration::from_secs(30 * 86400)
        );

        let e = err(&with_listeners("  []\n", ""));
        assert!(
            e.starts_with("listen: at least one address is required"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "admin: {",
            "listeners: [{address: \"127.0.0.1:8080\"}]\nadmin: {",
        ));
        assert_eq!(
            e,
            "listeners[0].address: `127.0.0.1:8080` is already used by another listener"
        );
        let e = err(&GOOD.replace(
            "admin: {",
            "listeners: [{address: \"127.0.0.1:9090\"}]\nadmin: {",
        ));
        assert!(e.starts_with("admin.listen: must differ"), "{e}");
        let e = err(&with_listeners(
            &format!("{TLS_LISTENER}{}", TLS_LISTENER.replace("8443", "8445")),
            "",
        ));
        assert_eq!(
            e,
            "listeners[1].name: `public` is empty or used by another listener"
        );
        let e = err(&with_listeners(
            &TLS_LISTENER.replace("tls:", "h2c: true\n    tls:"),
            "",
        ));
        assert!(
            e.starts_with("listeners[0].h2c: is for plain listeners"),
            "{e}"
        );
        let e = err(&with_listeners(
            "  - {address: \"127.0.0.1:8081\", h2c: true}\n  - {address: \"127.0.0.1:8082\"}\n",
            "",
        ));
        assert!(
            e.starts_with("listeners[1].h2c: must be the same on every plain listener"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "admin: {",
            "listeners: [{address: \"127.0.0.1:8081\", h2c: true}]\nadmin: {",
        ));
        assert!(
            e.starts_with("listen: plain listeners share one h2c setting"),
            "{e}"
        );
        let e = err(&with_listeners(
            &TLS_LISTENER.replace("[{cert: /etc/c.pem, key: /etc/c.key}]", "[]"),
            "",
        ));
        assert!(
            e.starts_with("listeners[0].tls.certificates: at least one"),
            "{e}"
        );
        let e = err(&with_listeners(
            &TLS_LISTENER.replace("key: /etc/c.key", "key: \"\""),
            "",
        ));
        assert_eq!(e, "listeners[0].tls.certificates[0].key: must not be empty");
        let e = err(&with_listeners(
            &MTLS_LISTENER.replace(
                "mode: required",
                "mode: optional, reject_in_handshake: true",
            ),
            "",
        ));
        assert_eq!(
            e,
            "listeners[0].tls.client_auth.reject_in_handshake: only applies to `mode: required`"
        );
        let e = err(&with_listeners(
            &MTLS_LISTENER.replace("mode: required", "mode: sometimes"),
            "",
        ));
        assert!(
            e.starts_with("listeners[0].tls.client_auth.mode: unknown variant `sometimes`"),
            "{e}"
        );
        let e = err(&with_listeners(
            &TLS_LISTENER.replace("tls:", "tls:\n      min_version: \"1.1\""),
            "",
        ));
        assert!(
            e.starts_with("listeners[0].tls.min_version: unknown variant `1.1`"),
            "{e}"
        );
    }

    #[test]
    fn certificate_clients_are_validated() {
        let cert_client =
            "  - {name: batch, cert: {uri: \"spiffe://corp/batch\"}, groups: [jobs]}\n";
        let text = with_listeners(MTLS_LISTENER, "").replace(
            "    groups: [analysts]\n",
            &format!("    groups: [analysts]\n{cert_client}"),
        );
        let c = load_str(&text, &env).unwrap();
        assert_eq!(c.clients[1].key_sha256, None);

        // Certificates need a listener that asks for them.
        let e = err(&text.replace("\n      client_auth: {mode: required, ca: /etc/ca.pem}", ""));
        assert!(
            e.starts_with("clients[1].cert: no listener asks for client certificates"),
            "{e}"
        );
        let e = err(&text.replace("{uri: \"spiffe://corp/batch\"}", "{uri: x, cn: y}"));
        assert_eq!(
            e,
            "clients[1].cert: expected exactly one of `cn`, `dns`, `uri`, `email`"
        );
        let e = err(&text.replace("{uri: \"spiffe://corp/batch\"}", "{}"));
        assert_eq!(
            e,
            "clients[1].cert: expected exactly one of `cn`, `dns`, `uri`, `email`"
        );
        let e = err(&text.replace("{uri: \"spiffe://corp/batch\"}", "{cn: \"\"}"));
        assert_eq!(e, "clients[1].cert: the value is empty");
        let e = err(&text.replace("{uri: \"spiffe://corp/batch\"}", "{serial: \"01\"}"));
        assert!(
            e.starts_with("clients[1].cert.serial: unknown field"),
            "{e}"
        );
        let e = err(&text.replace(", cert: {uri: \"spiffe://corp/batch\"}", ""));
        assert!(e.starts_with("clients[1]: needs `key_sha256`"), "{e}");
        let twice = text.replace(
            cert_client,
            &format!("{cert_client}{}", cert_client.replace("batch,", "batch2,")),
        );
        assert_eq!(
            err(&twice),
            "clients[2].cert: the same certificate match as clients[1] (on a listener both accept)"
        );
        // DNS names match without case, so they clash without case too.
        let dns = text.replace("{uri: \"spiffe://corp/batch\"}", "{dns: a.corp}");
        let twice = dns.replace(
            "    groups: [analysts]\n",
            "    groups: [analysts]\n  - {name: b, cert: {dns: A.CORP}}\n",
        );
        assert!(
            err(&twice).contains("the same certificate match"),
            "{twice}"
        );

        // Two listeners verifying certificates (each against its CA): every
        // certificate client names the ones it may come through.
        let partner = MTLS_LISTENER
            .replace("internal", "partners")
            .replace("8444", "8445")
            .replace("/etc/ca.pem", "/etc/partner-ca.pem");
        let two = with_listeners(&format!("{MTLS_LISTENER}{partner}"), "").replace(
            "    groups: [analysts]\n",
            &format!("    groups: [analysts]\n{cert_client}"),
        );
        let e = err(&two);
        assert!(
            e.starts_with("clients[1].cert.listeners: required: several listeners verify client certificates (internal, partners)"),
            "{e}"
        );
        let scoped = |on: &str| {
            two.replace(
                "\"spiffe://corp/batch\"}",
                &format!("\"spiffe://corp/batch\", listeners: [{on}]}}"),
            )
        };
        let c = load_str(&scoped("internal"), &env).unwrap();
        assert_eq!(c.clients[1].cert.as_ref().unwrap().listeners, ["internal"]);
        assert_eq!(
            err(&scoped("internal, nope")),
            "clients[1].cert.listeners: `nope` is not a listener that verifies client certificates"
        );
        // The same match on disjoint listeners is two clients.
        let pair = scoped("internal").replace(
            cert_client,
            &format!(
                "{}{}",
                cert_client.replace("}, groups", ", listeners: [internal]}, groups"),
                cert_client
                    .replace("batch,", "batch2,")
                    .replace("}, groups", ", listeners: [partners]}, groups")
            ),
        );
        assert!(load_str(&pair, &env).is_ok(), "{pair}");
    }

    #[test]
    fn upstream_tls_names_are_dns_names() {
        for (bad, want) in [
            (
                "server_name: \"a b\"",
                "server_name: a DNS name has no spaces",
            ),
            (
                "server_name: \"a\\0b\"",
                "server_name: a DNS name has no spaces",
            ),
            (
                "alternative_name: 10.0.0.1",
                "alternative_name: `10.0.0.1` is an IP address",
            ),
        ] {
            let text = format!(
                "listen: [\"127.0.0.1:8080\"]\nupstreams:\n  m:\n    hosts: [\"m.test:443\"]\n    tls: {{{bad}}}\nroutes: [{{upstream: m}}]\n"
            );
            let e = err(&text);
            assert!(e.starts_with(&format!("upstreams.m.tls.{want}")), "{e}");
        }
    }

    #[test]
    fn upstream_tls_is_validated() {
        let tls = |t: &str| {
            GOOD.replace(
                "    credential: \"Bearer ${VLLM_API_KEY}\"\n",
                &format!("    credential: \"Bearer ${{VLLM_API_KEY}}\"\n    tls: {t}\n"),
            )
        };
        // An IP host needs the name to verify.
        let e = err(&tls("{ca: /etc/ca.pem}"));
        assert!(e.starts_with("upstreams.vllm.tls.server_name: required: hosts[0] `127.0.0.1:8000` is an IP address"), "{e}");
        let c = load_str(&tls("{server_name: model.internal}"), &env).unwrap();
        let t = c.upstreams["vllm"].tls.as_ref().unwrap();
        assert!(t.verify_hostname && !t.insecure_skip_verify);
        let named = tls("{}").replace("127.0.0.1:8000", "vllm.internal:8000");
        load_str(&named, &env).unwrap();
        let e = err(&tls("{server_name: \"\"}"));
        assert_eq!(e, "upstreams.vllm.tls.server_name: must not be empty");
        let e = err(&tls("{server_name: m, client_cert: /etc/gw.pem}"));
        assert_eq!(
            e,
            "upstreams.vllm.tls: set both `client_cert` and `client_key`, or neither"
        );
        let e = err(&tls("{server_name: m, ca: \"\"}"));
        assert_eq!(e, "upstreams.vllm.tls.ca: must not be empty");
        let e = err(&tls("{server_name: m, sni: m}"));
        assert!(
            e.starts_with("upstreams.vllm.tls.sni: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn unknown_pingora_setting_is_rejected() {
        let e = err(&GOOD.replace("threads: 2", "threadz: 2"));
        assert!(
            e.starts_with("server.threadz: unknown Pingora server setting"),
            "{e}"
        );
        assert!(e.contains("threads"), "{e}");
    }

    #[test]
    fn shipped_config_files_are_valid() {
        let any = |name: &str| (name == "MODELGATE_ADMIN_TOKEN").then(|| "t".to_string());
        for text in [
            include_str!("../../conf/modelgate.yaml"),
            include_str!("../../conf/demo.yaml"),
        ] {
            let c = load_str(text, &any).unwrap();
            crate::gateway::Gateway::build(&c, std::sync::Arc::new(crate::metrics::Metrics::new()))
                .unwrap();
        }
    }
}
