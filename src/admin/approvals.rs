//! The approvers' side of the admin listener: the JSON API
//! (`GET /approvals?status=&limit=`, `GET /approvals/me`,
//! `GET /approvals/{id}`, `POST /approvals/{id}/approve|deny`), the live
//! event stream (`GET /approvals/stream`, server-sent events) and the
//! console page (`GET /ui`). Approvers sign in with their own API key or
//! JWT; only identities in `approval.approver_groups` may read or decide,
//! and nobody decides their own request.

use super::{error, json_response};
use crate::approval::store::{DecideError, Status};
use crate::approval::Approvals;
use crate::identity::{Client, ClientRegistry};
use bytes::Bytes;
use http::{Response, StatusCode};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The console: one static page, no external resources.
const CONSOLE: &str = include_str!("console.html");
/// The console's Content-Security-Policy: its one inline script is allowed
/// by hash, nothing else runs.
fn csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let start = CONSOLE.find("<script>").expect("the console has a script") + "<script>".len();
        let end = start + CONSOLE[start..].find("</script>").expect("closed");
        let hash = base64::engine::general_purpose::STANDARD
            .encode(Sha256::digest(&CONSOLE.as_bytes()[start..end]));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        )
    })
}

/// Largest approve/deny body read (a comment).
const MAX_BODY: usize = 16 * 1024;
/// Longest comment kept.
const MAX_COMMENT_CHARS: usize = 2000;
/// Most requests one list answer holds.
const MAX_LIST: usize = 1000;
/// A comment line on idle streams, so dead connections are noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// A stream ends after this; the console reconnects, and so signs in again
/// (a revoked key or an expired token loses the feed within this time).
const STREAM_LIFETIME: Duration = Duration::from_secs(300);

fn coded(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    json_response(
        status,
        json!({"error": {"message": message, "type": "admin_error", "code": code}}),
    )
}

/// Who is signed in, or the 401 to answer.
fn signed_in(
    session: &ServerSession,
    clients: &ClientRegistry,
) -> Result<Arc<Client>, Box<Response<Vec<u8>>>> {
    clients
        .authenticate(&session.req_header().headers)
        .map_err(|e| {
            let mut r = coded(StatusCode::UNAUTHORIZED, e.code(), e.message());
            r.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("static"));
            Box::new(r)
        })
}

/// An approver, or the 401/403 to answer.
fn approver(
    session: &ServerSession,
    clients: &ClientRegistry,
    approvals: &Approvals,
) -> Result<Arc<Client>, Box<Response<Vec<u8>>>> {
    let who = signed_in(session, clients)?;
    if !approvals.is_approver(&who) {
        return Err(Box::new(coded(
            StatusCode::FORBIDDEN,
            "not_approver",
            &format!("`{}` is not in an approver group", who.name),
        )));
    }
    Ok(who)
}

fn console() -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", CONSOLE.len())
        .header("content-security-policy", csp())
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
        .body(CONSOLE.as_bytes().to_vec())
        .expect("static response parts are valid")
}

/// Answers every approvals path but the stream.
pub async fn respond(
    session: &mut ServerSession,
    path: &str,
    approvals: &Approvals,
    clients: &ClientRegistry,
) -> Response<Vec<u8>> {
    let method = session.req_header().method.clone();
    let is_get = method == http::Method::GET;
    if path == "/ui" {
        return if is_get {
            console()
        } else {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        };
    }
    if path == "/approvals/me" {
        return match signed_in(session, clients) {
            Ok(who) => json_response(
                StatusCode::OK,
                json!({
                    "name": who.name,
                    "groups": who.groups,
                    "via": who.via.as_str(),
                    "approver": approvals.is_approver(&who),
                }),
            ),
            Err(r) => *r,
        };
    }
    let who = match approver(session, clients, approvals) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    let store = match approvals.store() {
        Ok(s) => s,
        Err(e) => {
            return coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &e.to_string(),
            )
        }
    };
    let rest = path.strip_prefix("/approvals").unwrap_or("");
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    match (segments.as_slice(), is_get) {
        ([], true) => {
            let query = session.req_header().uri.query().unwrap_or("");
            let mut status = None;
            let mut limit = 200;
            for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
                match k {
                    "status" if v.is_empty() || v == "all" => status = None,
                    "status" => match Status::parse(v) {
                        Some(s) => status = Some(s),
                        None => {
                            return coded(
                                StatusCode::BAD_REQUEST,
                                "bad_status",
                                "status is one of pending, approved, denied, expired, used",
                            )
                        }
                    },
                    "limit" => match v.parse::<usize>() {
                        Ok(n) if (1..=MAX_LIST).contains(&n) => limit = n,
                        _ => {
                            return coded(
                                StatusCode::BAD_REQUEST,
                                "bad_limit",
                                &format!("limit is a number from 1 to {MAX_LIST}"),
                            )
                        }
                    },
                    _ => {}
                }
            }
            match store.list(status, limit).await {
                Ok(list) => json_response(StatusCode::OK, json!({"approvals": list})),
                Err(e) => coded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    &e.to_string(),
                ),
            }
        }
        ([id], true) => match store.get(id).await {
            Ok(Some(a)) => json_response(StatusCode::OK, json!(a)),
            Ok(None) => coded(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such approval request",
            ),
            Err(e) => coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &e.to_string(),
            ),
        },
        ([id, verb @ ("approve" | "deny")], false) if method == http::Method::POST => {
            let comment = match read_comment(session).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            match approvals
                .decide(id, &who, *verb == "approve", comment)
                .await
            {
                Ok(a) => json_response(StatusCode::OK, json!(a)),
                Err(e) => decide_error(e),
            }
        }
        ([_], false) | ([_, "approve" | "deny"], _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, or POST to /approve or /deny",
        ),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn decide_error(e: DecideError) -> Response<Vec<u8>> {
    let (status, code) = match &e {
        DecideError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        DecideError::NotPending(_) => (StatusCode::CONFLICT, "not_pending"),
        DecideError::SelfApproval => (StatusCode::FORBIDDEN, "self_approval"),
        DecideError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
    };
    coded(status, code, &e.to_string())
}

/// The optional `{"comment": "..."}` of a decision.
async fn read_comment(session: &mut ServerSession) -> Result<Option<String>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    session.set_keepalive(None);
                    return Err(coded(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        &format!("the body is limited to {MAX_BODY} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                session.set_keepalive(None);
                return Err(coded(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    "could not read the body",
                ));
            }
        }
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Decision {
        #[serde(default)]
        comment: Option<String>,
    }
    let d: Decision = serde_json::from_slice(&body).map_err(|e| {
        coded(
            StatusCode::BAD_REQUEST,
            "bad_body",
            &format!("the body is {{\"comment\": \"...\"}} ({e})"),
        )
    })?;
    Ok(d.comment
        .map(|c| c.trim().chars().take(MAX_COMMENT_CHARS).collect::<String>())
        .filter(|c| !c.is_empty()))
}

/// `GET /approvals/stream`: one `approval` event per state change, from
/// every replica, until the client goes or the server stops.
pub async fn stream(
    http: &mut ServerSession,
    approvals: &Approvals,
    clients: &ClientRegistry,
    mut shutdown: ShutdownWatch,
) {
    http.set_keepalive(None);
    let refuse = match approver(http, clients, approvals) {
        Err(r) => Some(*r),
        Ok(_) => match approvals.store() {
            Err(e) => Some(coded(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                &e.to_string(),
            )),
            Ok(_) => None,
        },
    };
    if let Some(r) = refuse {
        let (parts, body) = r.into_parts();
        let header: ResponseHeader = parts.into();
        if http.write_response_header(Box::new(header)).await.is_ok() {
            let _ = http.write_response_body(body.into(), true).await;
        }
        return;
    }
    let store = approvals.store().expect("checked above");
    let mut events = store.subscribe();
    let mut header = ResponseHeader::build(200, Some(4)).expect("static status");
    for (k, v) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-store"),
        ("transfer-encoding", "chunked"),
        ("x-accel-buffering", "no"),
    ] {
        header.insert_header(k, v).expect("static header");
    }
    if http.write_response_header(Box::new(header)).await.is_err() {
        return;
    }
    // Bytes at once, so the client (and any proxy) knows the stream is live.
    if http
        .write_response_body(Bytes::from_static(b": connected\n\n"), false)
        .await
        .is_err()
    {
        return;
    }
    let mut tick = tokio::time::interval(KEEP_ALIVE);
    tick.tick().await;
    let end = tokio::time::sleep(STREAM_LIFETIME);
    tokio::pin!(end);
    loop {
        let chunk = tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).expect("events serialise");
                    Bytes::from(format!("event: approval\ndata: {data}\n\n"))
                }
                // Missed events: end the stream; the console reconnects and
                // reloads the pending list, so nothing stays stale.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!("approval stream: a slow console missed {n} events; closing it");
                    break;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => Bytes::from_static(b": keep-alive\n\n"),
            _ = &mut end => break,
            _ = shutdown.changed() => break,
        };
        if http.write_response_body(chunk, false).await.is_err() {
            return;
        }
    }
    let _ = http.write_response_body(Bytes::new(), true).await;
}
