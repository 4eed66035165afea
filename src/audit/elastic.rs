//! The HTTP sink: batches sealed records to an Elasticsearch (or OpenSearch)
//! `_bulk` endpoint, retrying with exponential backoff until the collector
//! takes them, so it survives the collector restarting.
//!
//! Wire format (the `_bulk` API, NDJSON): per record an action line
//! `{"create":{"_index":"<index>","_id":"<record hash>"}}` and the sealed
//! line itself. `create` with the record hash as `_id` makes retries
//! idempotent: a record the collector already has answers 409, which counts
//! as delivered. Items refused with 429 or 5xx are retried; other refusals
//! (a mapping error) are logged and counted, since retrying cannot help —
//! the file sink still holds those records.

use super::SinkHealth;
use crate::config::ElasticSinkConfig;
use crate::metrics::Metrics;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_http::RequestHeader;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One sealed record on its way to the collector.
#[derive(Clone)]
pub struct Doc {
    /// Hex hash of the record: its `_id`.
    pub id: String,
    /// The sealed line, without `\n`.
    pub line: Bytes,
}

/// `http://host:port[/base]` → (`host:port`, host, base path without trailing `/`).
pub fn parse_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "`{url}` must start with http://: the Elasticsearch sink speaks plain HTTP \
             (for HTTPS, put a TLS-terminating proxy next to the gateway)"
        )
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!(
            "`{url}` has no host (or has credentials: use api_key)"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h.to_string(), p),
            Err(_) => return Err(format!("`{url}`: `{p}` is not a port")),
        },
        _ => (authority.to_string(), 9200),
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok((
        format!("{host}:{port}"),
        authority.to_string(),
        path.to_string(),
    ))
}

pub struct ElasticSink {
    addr: String,
    host_header: String,
    bulk_path: String,
    index: String,
    api_key: Option<String>,
    batch_size: usize,
    flush_interval: Duration,
    timeout: Duration,
    max_buffer: usize,
    health: Arc<[SinkHealth]>,
    health_index: usize,
    metrics: Arc<Metrics>,
    connector: Connector,
}

/// What one `_bulk` attempt achieved.
enum Attempt {
    /// Every record is in (or refused for good).
    Done,
    /// These positions of the batch must be sent again.
    Retry(Vec<usize>, String),
}

impl ElasticSink {
    pub fn new(
        cfg: &ElasticSinkConfig,
        health: Arc<[SinkHealth]>,
        health_index: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let (addr, host_header, base) = parse_url(&cfg.url)?;
        Ok(ElasticSink {
            addr,
            host_header,
            bulk_path: format!("{base}/_bulk"),
            index: cfg.index.clone(),
            api_key: cfg.api_key.as_ref().map(|k| k.0.clone()),
            batch_size: cfg.batch_size,
            flush_interval: cfg.flush_interval,
            timeout: cfg.timeout,
            max_buffer: cfg.max_buffer,
            health,
            health_index,
            metrics,
            connector: Connector::new(None),
        })
    }

    pub fn max_buffer(&self) -> usize {
        self.max_buffer
    }

    pub fn health_index(&self) -> usize {
        self.health_index
    }

    fn health(&self) -> &SinkHealth {
        &self.health[self.health_index]
    }

    /// Delivers records from `rx` until it closes.
    pub async fn run(self, mut rx: mpsc::Receiver<Doc>) {
        let mut batch: Vec<Doc> = Vec::with_capacity(self.batch_size);
        loop {
            if batch.is_empty() && rx.recv_many(&mut batch, self.batch_size).await == 0 {
                return;
            }
            // Let the batch fill for up to flush_interval.
            let deadline = tokio::time::Instant::now() + self.flush_interval;
            while batch.len() < self.batch_size {
                let want = self.batch_size - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, want)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            self.deliver(&mut batch).await;
        }
    }

    /// Sends `batch` until every record is in; empties it.
    async fn deliver(&self, batch: &mut Vec<Doc>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.attempt(batch).await {
                Attempt::Done => {
                    self.health().ok();
                    self.metrics
                        .audit_written
                        .with_label_values(&[self.health().label.as_str()])
                        .inc_by(batch.len() as u64);
                    batch.clear();
                    return;
                }
                Attempt::Retry(keep, why) => {
                    let delivered = batch.len() - keep.len();
                    self.metrics
                        .audit_written
                        .with_label_values(&[self.health().label.as_str()])
                        .inc_by(delivered as u64);
                    let mut i = 0;
                    batch.retain(|_| {
                        i += 1;
                        keep.binary_search(&(i - 1)).is_ok()
                    });
                    self.health().failed();
                    self.metrics
                        .audit_sink_errors
                        .with_label_values(&[self.health().label.as_str()])
                        .inc();
                    log::warn!(
                        "audit: {}: {why}; {} records retried in {backoff:?}",
                        self.health().label,
                        batch.len()
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn body(&self, batch: &[Doc]) -> Bytes {
        let mut body = Vec::with_capacity(batch.iter().map(|d| d.line.len() + 128).sum());
        for doc in batch {
            body.extend_from_slice(b"{\"create\":{\"_index\":\"");
            body.extend_from_slice(self.index.as_bytes());
            body.extend_from_slice(b"\",\"_id\":\"");
            body.extend_from_slice(doc.id.as_bytes());
            body.extend_from_slice(b"\"}}\n");
            body.extend_from_slice(&doc.line);
            body.push(b'\n');
        }
        Bytes::from(body)
    }

    async fn attempt(&self, batch: &[Doc]) -> Attempt {
        let all = || (0..batch.len()).collect::<Vec<_>>();
        match tokio::time::timeout(self.timeout, self.post(self.body(batch))).await {
            Err(_) => Attempt::Retry(all(), format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Attempt::Retry(all(), e),
            Ok(Ok((status, body))) => match status {
                200 => self.items(batch.len(), &body),
                s => Attempt::Retry(all(), format!("_bulk answered {s}")),
            },
        }
    }

    /// Reads a `_bulk` answer: which items must be sent again.
    fn items(&self, n: usize, body: &[u8]) -> Attempt {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return Attempt::Retry((0..n).collect(), "_bulk answer is not JSON".into());
        };
        if v.get("errors") == Some(&Value::Bool(false)) {
            return Attempt::Done;
        }
        let Some(items) = v.get("items").and_then(Value::as_array) else {
            return Attempt::Retry((0..n).collect(), "_bulk answer has no items".into());
        };
        let mut retry = Vec::new();
        for i in 0..n {
            let item = items.get(i).and_then(|it| it.get("create"));
            let status = item.and_then(|c| c.get("status")).and_then(Value::as_u64);
            match status {
                Some(200..=299) | Some(409) => {}
                Some(s) if s != 429 && s < 500 => {
                    self.metrics
                        .audit_dropped
                        .with_label_values(&["sink_rejected"])
                        .inc();
                    log::error!(
                        "audit: {} refused a record ({s}): {}",
                        self.health().label,
                        item.and_then(|c| c.get("error")).unwrap_or(&Value::Null)
                    );
                }
                _ => retry.push(i),
            }
        }
        if retry.is_empty() {
            Attempt::Done
        } else {
            Attempt::Retry(retry, "the collector deferred some records".into())
        }
    }

    /// One POST; the status and body of the answer.
    async fn post(&self, body: Bytes) -> Result<(u16, Vec<u8>), String> {
        let addr = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.addr))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", self.addr))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.read_timeout = Some(self.timeout);
        peer.options.write_timeout = Some(self.timeout);
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", e.etype().as_str()))?;
        let mut req = RequestHeader::build("POST", self.bulk_path.as_bytes(), None)
            .map_err(|e| e.to_string())?;
        let headers = [
            ("host", self.host_header.clone()),
            ("content-type", "application/x-ndjson".into()),
            ("content-length", body.len().to_string()),
        ];
        for (k, v) in headers {
            req.insert_header(k, v).map_err(|e| e.to_string())?;
        }
        if let Some(key) = &self.api_key {
            req.insert_header("authorization", format!("ApiKey {key}"))
                .map_err(|_| "api_key is not a valid header value".to_string())?;
        }
        let io = |e: Box<pingora_error::Error>| format!("{addr}: {e}");
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(io)?;
        session.write_request_body(body, true).await.map_err(io)?;
        session.finish_request_body().await.map_err(io)?;
        session.read_response_header().await.map_err(io)?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        let mut answer = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(io)? {
            answer.extend_from_slice(&chunk);
            if answer.len() > 64 * 1024 * 1024 {
                return Err("_bulk answer larger than 64 MiB".into());
            }
        }
        let idle = peer.get_peer_options().and_then(|o| o.idle_timeout);
        self.connector
            .release_http_session(session, &peer, idle.or(Some(Duration::from_secs(30))))
            .await;
        Ok((status, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9200").unwrap(),
            ("127.0.0.1:9200".into(), "127.0.0.1:9200".into(), "".into())
        );
        assert_eq!(
            parse_url("http://es.local/prefix/").unwrap(),
            ("es.local:9200".into(), "es.local".into(), "/prefix".into())
        );
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http://:9200").is_err());
        assert!(parse_url("http://u:p@x:1").is_err());
        assert!(parse_url("http://x:notaport").is_err());
    }
}
