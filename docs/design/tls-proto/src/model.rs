//! A stand-in model server for the tests: answers every request with an SSE
//! stream (`x-events` events, `x-delay-ms` apart) whose text contains an
//! e-mail address the gateway must mask. Served by Pingora itself over TLS
//! with `TlsSettings::intermediate(cert, key)`, optionally requiring a client
//! certificate (the upstream-mTLS case). Each event reports who the model
//! saw: the `x-client-name` the gateway sent and the organisation of the
//! gateway's client certificate.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use std::sync::Arc;
use std::time::Duration;

pub struct Model;

#[async_trait]
impl HttpServerApp for Model {
    async fn process_new_http(
        self: &Arc<Self>,
        mut http: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !http.read_request().await.ok()? {
            return None;
        }
        while let Ok(Some(_)) = http.read_request_body().await {}
        let h = |name: &str| {
            http.req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let events: usize = h("x-events").parse().unwrap_or(5);
        let delay = Duration::from_millis(h("x-delay-ms").parse().unwrap_or(100));
        let client = h("x-client-name");
        let host = h("host");
        let peer_org = http
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.organization.clone())
            .unwrap_or_default();
        let mut resp = ResponseHeader::build(200, Some(3)).ok()?;
        resp.insert_header("content-type", "text/event-stream")
            .ok()?;
        resp.insert_header("transfer-encoding", "chunked").ok()?;
        http.set_keepalive(Some(60));
        http.write_response_header(Box::new(resp)).await.ok()?;
        for i in 0..events {
            if i > 0 {
                tokio::time::sleep(delay).await;
            }
            let ev = format!(
                "data: {{\"n\":{i},\"client\":\"{client}\",\"host\":\"{host}\",\"gateway_cert_o\":\"{peer_org}\",\"text\":\"write to jane.doe@example.com\"}}\n\n"
            );
            http.write_response_body(Bytes::from(ev), false)
                .await
                .ok()?;
        }
        http.write_response_body(Bytes::from_static(b"data: [DONE]\n\n"), false)
            .await
            .ok()?;
        http.finish_body().await.ok()?;
        let settings = HttpPersistentSettings::for_session(&http);
        http.finish()
            .await
            .ok()?
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }
}
