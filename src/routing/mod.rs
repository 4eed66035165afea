//! Routing: which route a request belongs to (path prefix, then the `model`
//! field of an OpenAI-style body), and which upstream pool serves it. Pools
//! (load balancing, health checks, failover) live in [`pool`].

pub mod pool;

use crate::config::{Config, ConfigError};
use globset::{Glob, GlobSet, GlobSetBuilder};
pub use pool::UpstreamPool;

/// One configured route, compiled.
#[derive(Debug)]
pub struct Route {
    /// Name used in metrics labels and logs.
    pub name: String,
    pub path_prefix: String,
    models: Option<GlobSet>,
    /// Index of the upstream pool in the gateway's pool list.
    pub pool: usize,
    pub policy: String,
}

impl Route {
    fn matches(&self, path: &str, model: Option<&str>) -> bool {
        path.starts_with(&self.path_prefix)
            && match &self.models {
                None => true,
                Some(set) => model.is_some_and(|m| set.is_match(m)),
            }
    }
}

/// Routes in configuration order; the first match wins.
///
/// ```
/// let yaml = r#"
/// listen: ["127.0.0.1:8080"]
/// upstreams: {llama: {hosts: ["127.0.0.1:1"]}, qwen: {hosts: ["127.0.0.1:2"]}}
/// routes:
///   - {path_prefix: "/v1/", model: "llama-*", upstream: llama}
///   - {path_prefix: "/v1/", model: ["qwen-*", "qwq-*"], upstream: qwen}
/// "#;
/// let config = modelgate::config::load_str(yaml, &|_| None).unwrap();
/// let pools = vec!["llama".to_string(), "qwen".to_string()];
/// let router = modelgate::routing::Router::new(&config, &pools).unwrap();
/// assert_eq!(router.route("/v1/chat/completions", Some("qwq-32b")).unwrap().pool, 1);
/// assert!(router.route("/v1/chat/completions", Some("mistral-7b")).is_none());
/// ```
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Compiles the routes; `pool_names[i]` is the name of pool index `i`.
    pub fn new(config: &Config, pool_names: &[String]) -> Result<Self, ConfigError> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let pool = pool_names
                .iter()
                .position(|p| *p == r.upstream)
                .ok_or_else(|| {
                    ConfigError::at(format!("routes[{i}].upstream"), "unknown upstream")
                })?;
            let models = match &r.model {
                None => None,
                Some(globs) => {
                    let mut b = GlobSetBuilder::new();
                    for (j, g) in globs.to_vec().iter().enumerate() {
                        b.add(Glob::new(g).map_err(|e| {
                            ConfigError::at(format!("routes[{i}].model[{j}]"), e.kind())
                        })?);
                    }
                    Some(
                        b.build()
                            .map_err(|e| ConfigError::at(format!("routes[{i}].model"), e.kind()))?,
                    )
                }
            };
            let shared = config
                .routes
                .iter()
                .filter(|o| o.upstream == r.upstream)
                .count()
                > 1;
            let name = r.name.clone().unwrap_or_else(|| {
                if shared {
                    format!("{}#{i}", r.upstream)
                } else {
                    r.upstream.clone()
                }
            });
            routes.push(Route {
                name,
                path_prefix: r.path_prefix.clone(),
                models,
                pool,
                policy: r.policy.clone(),
            });
        }
        Ok(Router { routes })
    }

    /// The first route matching `path` and `model`.
    pub fn route(&self, path: &str, model: Option<&str>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path, model))
    }

    /// Index form of [`Router::route`], for storing in a request context.
    pub fn route_index(&self, path: &str, model: Option<&str>) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(path, model))
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &str) -> Router {
        let yaml = format!(
            "listen: ['127.0.0.1:8080']\nupstreams: {{a: {{hosts: ['127.0.0.1:1']}}, b: {{hosts: ['127.0.0.1:2']}}}}\nroutes:\n{routes}"
        );
        let c = crate::config::load_str(&yaml, &|_| None).unwrap();
        Router::new(&c, &["a".to_string(), "b".to_string()]).unwrap()
    }

    #[test]
    fn first_match_wins_with_model_globs_and_fallback() {
        let r = router(
            "  - {path_prefix: /v1/, model: 'llama-*', upstream: a}\n  - {path_prefix: /v1/, model: ['qwen-*'], upstream: b}\n  - {path_prefix: /api/, upstream: b, name: ollama}\n  - {path_prefix: /, upstream: a}\n",
        );
        assert_eq!(
            r.route("/v1/chat/completions", Some("llama-3-8b"))
                .unwrap()
                .name,
            "a#0"
        );
        assert_eq!(
            r.route("/v1/chat/completions", Some("qwen-2"))
                .unwrap()
                .pool,
            1
        );
        assert_eq!(
            r.route("/v1/chat/completions", Some("gpt-4")).unwrap().name,
            "a#3"
        );
        assert_eq!(r.route("/v1/chat/completions", None).unwrap().name, "a#3");
        assert_eq!(
            r.route("/api/chat", Some("llama-3")).unwrap().name,
            "ollama"
        );
    }

    #[test]
    fn no_catch_all_means_no_route() {
        let r = router("  - {path_prefix: /v1/, upstream: a}\n");
        assert!(r.route("/admin", None).is_none());
        assert!(r.route("/v1/models", None).is_some());
    }
}
