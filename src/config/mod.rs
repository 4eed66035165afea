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
