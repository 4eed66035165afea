//! Model-list fingerprints: a background service that fetches each upstream
//! host's `/v1/models` every `drift.models_check_interval` (through the
//! pool's own peer settings: TLS, timeouts, credential) and raises a
//! `drift_alert` when its hash changes: a model added, removed or swapped.
//!
//! The hash is over a canonical form of the answer: object keys sorted and
//! every `created` field dropped (vLLM stamps the time of the request
//! there), so only a change in what is served changes it. The first answer
//! after start is the reference.

use super::{now, Alerts};
use crate::audit::record::Entry;
use crate::audit::Recorder;
use crate::routing::pool::UpstreamPool;
use async_trait::async_trait;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Largest model list read.
const MAX_BODY: usize = 1 << 20;

/// The service.
pub struct ModelsWatch {
    pub pools: Arc<Vec<UpstreamPool>>,
    pub interval: Duration,
    pub path: String,
    pub alerts: Arc<Alerts>,
    pub audit: Recorder,
}

/// A host's last answer: its hash and model ids.
struct Seen {
    sha256: String,
    ids: Vec<String>,
}

/// Longest one fetch may take, answer included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

#[async_trait]
impl BackgroundService for ModelsWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let connector = Arc::new(Connector::new(None));
        let mut seen: HashMap<(String, String), Seen> = HashMap::new();
        loop {
            // Every host at once: a slow one holds up only itself.
            let mut fetches = tokio::task::JoinSet::new();
            for (p, pool) in self.pools.iter().enumerate() {
                for backend in pool.backends() {
                    let (pools, connector, path) =
                        (self.pools.clone(), connector.clone(), self.path.clone());
                    fetches.spawn(async move {
                        let pool = &pools[p];
                        let host = backend.addr.to_string();
                        let fetched = tokio::time::timeout(
                            FETCH_TIMEOUT,
                            fetch(&connector, pool, &backend, &path),
                        )
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
                        (pool.name.clone(), host, fetched)
                    });
                }
            }
            loop {
                let done = tokio::select! {
                    d = fetches.join_next() => d,
                    _ = shutdown.changed() => return,
                };
                let Some(done) = done else { break };
                let Ok((pool, host, fetched)) = done else {
                    continue;
                };
                match fetched {
                    Ok(now_seen) => self.compare(&mut seen, &pool, host, now_seen),
                    Err(e) => {
                        self.alerts
                            .metrics()
                            .upstream_models_check_errors
                            .with_label_values(&[pool.as_str(), host.as_str()])
                            .inc();
                        log::debug!("drift: model list of {pool} host {host}: {e}");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl ModelsWatch {
    fn compare(
        &self,
        seen: &mut HashMap<(String, String), Seen>,
        pool: &str,
        host: String,
        new: Seen,
    ) {
        let key = (pool.to_string(), host);
        match seen.get(&key) {
            None => {
                log::info!(
                    "drift: model list of {pool} host {}: {} models, sha256 {}",
                    key.1,
                    new.ids.len(),
                    &new.sha256[..16]
                );
            }
            Some(old) if old.sha256 == new.sha256 => {}
            Some(old) => {
                let record = json!({
                    "kind": "drift_alert",
                    "ts": now(),
                    "state": "firing",
                    "signal": "models_list",
                    "upstream": pool,
                    "host": key.1,
                    "previous_sha256": old.sha256,
                    "sha256": new.sha256,
                    "previous_models": old.ids,
                    "models": new.ids,
                });
                self.alerts
                    .metrics()
                    .upstream_models_changes
                    .with_label_values(&[pool, key.1.as_str()])
                    .inc();
                self.alerts.notify(&record);
                if !self.audit.send(Entry::Drift(Box::new(record))) {
                    log::error!("drift: the model-list change alert could not be recorded (the audit writer is gone)");
                }
            }
        }
        seen.insert(key, new);
    }
}

/// One host's model list: its canonical hash and ids.
async fn fetch(
    connector: &Connector,
    pool: &UpstreamPool,
    backend: &pingora_load_balancing::Backend,
    path: &str,
) -> Result<Seen, String> {
    let peer = pool.peer(backend);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header("host", pool.host_for(backend))
        .map_err(|e| e.to_string())?;
    req.insert_header("accept", "application/json")
        .map_err(|e| e.to_string())?;
    req.insert_header("accept-encoding", "identity")
        .map_err(|e| e.to_string())?;
    pool.credential.apply(&mut req);
    session.set_write_timeout(Some(FETCH_TIMEOUT));
    session.set_read_timeout(Some(FETCH_TIMEOUT));
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| e.to_string())?;
    session
        .finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    session
        .read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        return Err(format!("HTTP {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(format!("answer longer than {MAX_BODY} bytes"));
        }
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
    Ok(fingerprint(&value))
}

/// The hash of a model list's canonical form, and its model ids.
fn fingerprint(v: &Value) -> Seen {
    let canonical = canonical(v);
    let sha256 = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
    let mut ids: Vec<String> = v
        .get("data")
        .or_else(|| v.get("models"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("id").or_else(|| m.get("name"))?.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    Seen { sha256, ids }
}

/// `v` with object keys sorted, `created` fields dropped and arrays in a
/// fixed order (replicas behind one address may list models in any order).
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().filter(|k| *k != "created").collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(canonical).collect();
            items.sort_by_cached_key(|v| v.to_string());
            Value::Array(items)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_key_order_and_creation_times() {
        let a = json!({"object": "list", "data": [{"id": "m1", "created": 1, "owned_by": "x"}]});
        let b = json!({"data": [{"owned_by": "x", "created": 999, "id": "m1"}], "object": "list"});
        let c = json!({"object": "list", "data": [{"id": "m2", "created": 1, "owned_by": "x"}]});
        assert_eq!(fingerprint(&a).sha256, fingerprint(&b).sha256);
        assert_ne!(fingerprint(&a).sha256, fingerprint(&c).sha256);
        assert_eq!(fingerprint(&c).ids, vec!["m2"]);
        // Order does not matter either.
        let d = json!({"data": [{"id": "m2"}, {"id": "m1"}]});
        let e = json!({"data": [{"id": "m1"}, {"id": "m2"}]});
        assert_eq!(fingerprint(&d).sha256, fingerprint(&e).sha256);
        assert_eq!(fingerprint(&d).ids, vec!["m1", "m2"]);
    }
}
