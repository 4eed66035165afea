//! A miniature of modelgate's `ProxyHttp`: only the TLS-relevant hooks.
//!
//! - identity: a verified client certificate (from `SslDigest::extension`)
//!   maps to a configured client + groups; otherwise an API key.
//! - policy: `/admin*` needs group `admin` (stands for modelgate's rules).
//! - `/whoami` answers locally with what the connection proved.
//! - routing by path prefix to pools, each plain or TLS (`UpstreamTls`).
//! - response masking (e-mail -> `[EMAIL]`) with the same header handling
//!   as modelgate's `response_filter` (no `Transfer-Encoding` on HTTP/2).
//! - upstream failures counted by kind (`tls_verify`, ...) and answered
//!   with a 502 whose code names the TLS failure.

use crate::identity::CertClients;
use crate::listener::TlsConn;
use crate::upstream::{error_kind, UpstreamTls};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub struct Pool {
    pub name: String,
    pub prefix: String,
    pub addr: SocketAddr,
    pub tls: Option<UpstreamTls>,
}

pub struct Gateway {
    pub pools: Vec<Pool>,
    pub cert_clients: CertClients,
    /// `(pool, kind) -> count`: modelgate's `modelgate_upstream_errors_total`.
    pub upstream_errors: Arc<Mutex<BTreeMap<(String, &'static str), u64>>>,
}

#[derive(Default)]
pub struct Ctx {
    client: Option<(String, Vec<String>, &'static str)>,
    pool: Option<usize>,
    mask: bool,
}

/// The TLS facts of this request's connection (None on plain HTTP).
pub fn tls_conn(session: &Session) -> Option<&TlsConn> {
    session
        .as_downstream()
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<TlsConn>()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
    )
}

async fn respond(session: &mut Session, status: u16, body: String) -> Result<bool> {
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

fn error_body(code: &str, message: &str) -> String {
    format!(
        "{{\"error\":{{\"code\":{},\"message\":{}}}}}",
        json_str(code),
        json_str(message)
    )
}

impl Gateway {
    fn whoami(&self, session: &Session, ctx: &Ctx) -> String {
        let conn = tls_conn(session);
        let version = if session.as_downstream().is_http2() {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        let ssl = session
            .as_downstream()
            .digest()
            .and_then(|d| d.ssl_digest.clone());
        let (client, groups, via) = ctx.client.clone().unwrap_or_default();
        let cert = conn.and_then(|c| c.client_cert.as_ref());
        format!(
            "{{\"client\":{},\"groups\":{},\"via\":{},\"http\":{},\"tls\":{},\"cipher\":{},\"listener\":{},\"sni\":{},\"cert\":{}}}",
            json_str(&client),
            json_list(&groups),
            json_str(via),
            json_str(version),
            json_str(ssl.as_ref().map_or("", |s| &s.version)),
            json_str(ssl.as_ref().map_or("", |s| &s.cipher)),
            json_str(conn.map_or("", |c| &c.listener)),
            json_str(conn.and_then(|c| c.sni.as_deref()).unwrap_or("")),
            match cert {
                None => "null".into(),
                Some(id) => format!(
                    "{{\"cn\":{},\"ou\":{},\"dns\":{},\"uri\":{},\"email\":{},\"serial\":{},\"sha256\":{}}}",
                    json_str(id.common_name.as_deref().unwrap_or("")),
                    json_list(&id.organizational_units),
                    json_list(&id.dns),
                    json_list(&id.uris),
                    json_list(&id.emails),
                    json_str(&id.serial),
                    json_str(&id.sha256)
                ),
            }
        )
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // Identity: a verified client certificate wins; it must name a
        // configured client (else 403, like an unknown key is a 401).
        if let Some(id) = tls_conn(session).and_then(|c| c.client_cert.as_ref()) {
            match self.cert_clients.lookup(id) {
                Some(c) => ctx.client = Some((c.name.clone(), c.groups.clone(), "client_cert")),
                None => {
                    let msg = format!(
                        "The client certificate (CN={}) names no configured client.",
                        id.common_name.as_deref().unwrap_or("-")
                    );
                    return respond(session, 403, error_body("unknown_client_certificate", &msg))
                        .await;
                }
            }
        } else if tls_conn(session).is_some_and(|c| c.client_cert_required) {
            return respond(
                session,
                401,
                error_body(
                    "client_certificate_required",
                    "This listener requires a client certificate.",
                ),
            )
            .await;
        } else {
            let key = session
                .req_header()
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if key == Some("Bearer k-demo") {
                ctx.client = Some(("demo".into(), vec![], "api_key"));
            } else {
                return respond(
                    session,
                    401,
                    error_body("invalid_api_key", "Missing API key."),
                )
                .await;
            }
        }
        let path = session.req_header().uri.path().to_string();
        if path == "/whoami" {
            let body = self.whoami(session, ctx);
            return respond(session, 200, body).await;
        }
        let groups = &ctx.client.as_ref().expect("set above").1;
        if path.starts_with("/admin") && !groups.iter().any(|g| g == "admin") {
            return respond(
                session,
                403,
                error_body("forbidden", "Group `admin` required."),
            )
            .await;
        }
        match self.pools.iter().position(|p| path.starts_with(&p.prefix)) {
            Some(i) => ctx.pool = Some(i),
            None => return respond(session, 404, error_body("not_found", "No route.")).await,
        }
        ctx.mask = true;
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = &self.pools[ctx.pool.expect("routed")];
        let mut peer = match &pool.tls {
            Some(tls) => tls.peer(pool.addr),
            None => HttpPeer::new(pool.addr, false, String::new()),
        };
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
        peer.options.read_timeout = Some(std::time::Duration::from_secs(10));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (name, _, via) = ctx.client.as_ref().expect("authenticated");
        req.insert_header("x-client-name", name.as_str())?;
        req.insert_header("x-client-via", *via)?;
        req.remove_header("authorization");
        // HTTP/2 clients send :authority, not Host: Pingora synthesizes Host
        // for HTTP/1.1 upstreams (pingora-proxy proxy_h1.rs:53-62), and a
        // Host set here (modelgate's `host_header`) wins over the authority
        // (proxy_common.rs:262-295).
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.mask {
            resp.remove_header("content-length");
            // As modelgate: chunked framing only on HTTP/1.1; HTTP/2 frames itself.
            if !session.as_downstream().is_http2() {
                resp.insert_header("transfer-encoding", "chunked")?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        // The real masker holds back partial matches across chunks; the
        // upstream here writes whole events.
        if let (true, Some(b)) = (ctx.mask, body.as_ref()) {
            let text = String::from_utf8_lossy(b);
            if text.contains("jane.doe@example.com") {
                *body = Some(Bytes::from(text.replace("jane.doe@example.com", "[EMAIL]")));
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        let pool = &self.pools[ctx.pool.expect("routed")];
        let kind = error_kind(&e);
        *self
            .upstream_errors
            .lock()
            .unwrap()
            .entry((pool.name.clone(), kind))
            .or_default() += 1;
        // The verify result is in the error's context, e.g. "certificate
        // verify failed ... unable to get local issuer certificate".
        log::warn!("pool {}: cannot connect to {peer}: [{kind}] {e}", pool.name);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.esource() == &pingora_error::ErrorSource::Upstream {
            let pool = &self.pools[ctx.pool.expect("routed")];
            let kind = error_kind(&e);
            *self
                .upstream_errors
                .lock()
                .unwrap()
                .entry((pool.name.clone(), kind))
                .or_default() += 1;
            log::warn!("pool {}: error with {peer}: [{kind}] {e}", pool.name);
        }
        let mut e = e.more_context(format!("peer: {peer}"));
        e.retry.decide_reuse(client_reused);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        let code = match error_kind(e) {
            "tls_verify" => "upstream_certificate_invalid",
            "tls_client_cert_refused" => "upstream_refused_client_certificate",
            "tls_handshake" | "tls_alert" => "upstream_tls_failed",
            _ => "bad_gateway",
        };
        if session.response_written().is_none() {
            let _ = respond(
                session,
                502,
                error_body(code, "The model server could not be reached."),
            )
            .await;
        }
        FailToProxy {
            error_code: 502,
            can_reuse_downstream: false,
        }
    }
}
