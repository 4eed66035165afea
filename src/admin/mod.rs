//! The admin listener: `/healthz` (the process is up), `/readyz` (every
//! upstream pool has a healthy host, and the approval store is connected),
//! `/metrics` (Prometheus) and `/upstreams` (per-host health) need
//! `Authorization: Bearer <admin.token>` (without a configured token those
//! answer 403); the approvers' API and console (`/approvals...`, `/ui`) are
//! in [`approvals`], signed in with the approver's own key or token.

mod approvals;

use crate::approval::Approvals;
use crate::identity::ClientRegistry;
use crate::metrics::Metrics;
use crate::routing::UpstreamPool;
use http::{Response, StatusCode};
use pingora_core::apps::{HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct AdminApp {
    token_digest: Option<[u8; 32]>,
    pools: Arc<Vec<UpstreamPool>>,
    metrics: Arc<Metrics>,
    /// With `approval:` configured: the service and who may sign in.
    approvals: Option<(Arc<Approvals>, Arc<ClientRegistry>)>,
}

impl AdminApp {
    pub fn new(
        token: Option<&str>,
        pools: Arc<Vec<UpstreamPool>>,
        metrics: Arc<Metrics>,
        approvals: Option<(Arc<Approvals>, Arc<ClientRegistry>)>,
    ) -> Self {
        AdminApp {
            token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            pools,
            metrics,
            approvals,
        }
    }

    /// Compares digests in constant time, so neither content nor length leaks.
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(expected) = &self.token_digest else {
            return false;
        };
        let presented = crate::identity::presented_key(&session.req_header().headers).unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(expected))
    }

    fn readiness(&self) -> (bool, serde_json::Value) {
        let mut all = true;
        let mut pools = serde_json::Map::new();
        for p in self.pools.iter() {
            let ready = p.is_ready();
            all &= ready;
            pools.insert(p.name.clone(), json!(ready));
        }
        let mut body = json!({"ready": all, "upstreams": pools});
        if let Some((a, _)) = &self.approvals {
            let store = a.store().is_ok();
            all &= store;
            body["ready"] = json!(all);
            body["approval_store"] = json!({"kind": a.store_kind(), "ready": store});
        }
        (all, body)
    }
}

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec(&body).expect("json values serialise");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json_response(
        status,
        json!({"error": {"message": message, "type": "admin_error", "code": null}}),
    )
}

impl HttpServerApp for AdminApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match http.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::debug!("admin: reading a request: {e}");
                return None;
            }
        }
        http.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        if http.req_header().uri.path() == "/approvals/stream" {
            if let Some((approvals, clients)) = &self.approvals {
                approvals::stream(&mut http, approvals, clients, shutdown.clone()).await;
                return None;
            }
        }
        let response = self.response(&mut http).await;
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        if let Err(e) = http.write_response_header(Box::new(header)).await {
            log::debug!("admin: writing a response: {e}");
            return None;
        }
        if !body.is_empty() {
            if let Err(e) = http.write_response_body(body.into(), true).await {
                log::debug!("admin: writing a response: {e}");
                return None;
            }
        }
        let settings = pingora_core::apps::HttpPersistentSettings::for_session(&http);
        match http.finish().await {
            Ok(c) => c.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

impl AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let is_get = session.req_header().method == http::Method::GET;
        if path == "/ui" || path == "/approvals" || path.starts_with("/approvals/") {
            return match &self.approvals {
                Some((a, clients)) => approvals::respond(session, &path, a, clients).await,
                None => error(
                    StatusCode::NOT_FOUND,
                    "approval is not configured on this gateway",
                ),
            };
        }
        match path.as_str() {
            "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => {
                let (ready, body) = self.readiness();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json_response(status, body)
            }
            "/metrics" | "/upstreams" if self.token_digest.is_none() => {
                error(StatusCode::FORBIDDEN, "admin.token is not configured")
            }
            "/metrics" | "/upstreams" if !self.authorized(session) => {
                let mut r = error(StatusCode::UNAUTHORIZED, "admin token required");
                r.headers_mut()
                    .insert("www-authenticate", "Bearer".parse().unwrap());
                r
            }
            "/metrics" | "/upstreams" if !is_get => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            "/metrics" => {
                let body = self.metrics.render();
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .expect("static response parts are valid")
            }
            "/upstreams" => {
                let pools: serde_json::Map<_, _> = self
                    .pools
                    .iter()
                    .map(|p| {
                        let hosts: serde_json::Map<_, _> = p
                            .host_health()
                            .into_iter()
                            .map(|(h, ok)| (h, json!(ok)))
                            .collect();
                        (
                            p.name.clone(),
                            json!({"ready": p.is_ready(), "hosts": hosts}),
                        )
                    })
                    .collect();
                json_response(StatusCode::OK, json!(pools))
            }
            _ => error(StatusCode::NOT_FOUND, "not found"),
        }
    }
}
