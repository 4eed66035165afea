//! The floor under modelgate's passthrough: the least a Pingora program
//! does to do what `conf/nginx.conf` does (the client key checked, 401 when
//! it is wrong; the credential swapped; upstream keep-alive), so the load
//! test (`loadtest/vs_nginx.py --floors`) can show how much of a proxy's
//! cost is Pingora's own and how much is modelgate's code.
//!
//! One source, built two ways:
//!
//! - **`pingora`**: crates.io Pingora 0.9.1, unpatched, with Pingora's
//!   defaults except nginx's upstream timeouts (work-stealing runtime, the
//!   system allocator, the disabled compression module) and the request
//!   body streamed through: the "minimal Pingora proxy" issue 8 measured
//!   before any tuning, plus those timeouts. Built from
//!   `loadtest/floor/Cargo.toml`, whose `build.rs` sets `cfg(floor_stock)`.
//! - **`floor`**: the same program on modelgate's patched Pingora
//!   (`vendor/`, `vendor/PATCHES.md`) with modelgate's settings: one
//!   runtime per thread, jemalloc, no downstream modules, no second map of
//!   header-name spellings (`http.preserve_header_case: false`), a plain
//!   listener without Pingora's 64 KiB read buffer, and the request body
//!   read whole before going upstream, as modelgate reads it (under a 30 s
//!   deadline, 408, and at most 10 MiB, 413: modelgate's and nginx's
//!   defaults), so calls take the same one-loop path. Built as the main
//!   crate's example `pingora_floor`. A chunked request body is relayed
//!   chunked, which takes Pingora's two-halves path where modelgate sends
//!   it with a length: the floor is a floor for bodies of known length,
//!   which is what the load test sends.
//!
//! Both set nginx's upstream timeouts (`conf/nginx.conf`, modelgate's
//! defaults): connect 2 s, send 30 s, read 300 s, idle 60 s.
//!
//! Usage: `pingora-floor LISTEN UPSTREAM CLIENT_KEY CREDENTIAL THREADS`,
//! e.g. `pingora-floor 127.0.0.1:8080 127.0.0.1:9000 load-test-key
//! "Bearer upstream-secret" 1`.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::HeaderValue;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::time::Duration;

#[cfg(not(floor_stock))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Floor {
    upstream: SocketAddr,
    /// `Bearer <client key>`, compared byte for byte (nginx's `map`).
    key: HeaderValue,
    credential: HeaderValue,
}

#[cfg_attr(floor_stock, async_trait::async_trait)]
impl ProxyHttp for Floor {
    /// The request body, read whole (`floor` only).
    type CTX = Bytes;

    fn new_ctx(&self) -> Bytes {
        Bytes::new()
    }

    #[cfg(not(floor_stock))]
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    #[cfg_attr(floor_stock, allow(unused_variables))]
    async fn request_filter(&self, session: &mut Session, body: &mut Bytes) -> Result<bool> {
        if session.req_header().headers.get(AUTHORIZATION) != Some(&self.key) {
            let mut resp = ResponseHeader::build(401, Some(1))?;
            resp.insert_header(CONTENT_LENGTH, 0)?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        #[cfg(not(floor_stock))]
        {
            *body = read_body(session).await?;
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _body: &mut Bytes,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(Duration::from_secs(2));
        o.read_timeout = Some(Duration::from_secs(300));
        o.write_timeout = Some(Duration::from_secs(30));
        o.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _body: &mut Bytes,
    ) -> Result<()> {
        req.insert_header(AUTHORIZATION, self.credential.clone())
    }

    /// Replays the body read in `request_filter` (`floor`; see
    /// `vendor/PATCHES.md`); `pingora` streams it through untouched.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        read: &mut Bytes,
    ) -> Result<()> {
        if !read.is_empty() {
            *body = end_of_stream.then(|| read.clone());
        }
        Ok(())
    }
}

/// The request body, whole: one chunk (the usual case) kept as it is, as
/// modelgate does; 408 after 30 s, 413 over 10 MiB (declared or read).
#[cfg(not(floor_stock))]
async fn read_body(session: &mut Session) -> Result<Bytes> {
    use pingora_error::{Error, ErrorType::HTTPStatus};
    const LIMIT: usize = 10 << 20;
    let declared = session.req_header().headers.get(CONTENT_LENGTH);
    if declared.and_then(|v| v.to_str().ok()?.parse::<usize>().ok()) > Some(LIMIT) {
        return Error::e_explain(HTTPStatus(413), "request body over 10 MiB");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut first, mut more, mut total) = (Bytes::new(), None::<bytes::BytesMut>, 0);
    loop {
        let read = tokio::time::timeout_at(deadline, session.read_request_body());
        let chunk = read
            .await
            .map_err(|_| Error::explain(HTTPStatus(408), "request body not received in time"))??;
        let Some(chunk) = chunk else { break };
        total += chunk.len();
        if total > LIMIT {
            return Error::e_explain(HTTPStatus(413), "request body over 10 MiB");
        }
        match &mut more {
            Some(buf) => buf.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut buf = bytes::BytesMut::from(&first[..]);
                buf.extend_from_slice(&chunk);
                more = Some(buf);
            }
        }
    }
    Ok(more.map_or(first, bytes::BytesMut::freeze))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, key, credential, threads] = &args[..] else {
        eprintln!("usage: pingora-floor LISTEN UPSTREAM CLIENT_KEY CREDENTIAL THREADS");
        std::process::exit(2);
    };
    let floor = Floor {
        upstream: upstream
            .parse()
            .expect("UPSTREAM: an address such as 127.0.0.1:9000"),
        key: HeaderValue::from_str(&format!("Bearer {key}")).expect("CLIENT_KEY: a header value"),
        credential: HeaderValue::from_str(credential).expect("CREDENTIAL: a header value"),
    };
    let mut conf = ServerConf {
        threads: threads.parse().expect("THREADS: a number"),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    if cfg!(not(floor_stock)) {
        conf.work_stealing = false;
    }
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, floor);
    #[cfg(floor_stock)]
    proxy.add_tcp(listen);
    #[cfg(not(floor_stock))]
    {
        pingora_core::protocols::http::v1::common::set_preserve_header_case(false);
        let listener = pingora_core::listeners::ListenerConfig::tcp(listen).l4_buffer(
            pingora_core::listeners::L4BufferSettings {
                read: Some(0),
                write: None,
            },
        );
        proxy.add_listener(listener);
    }
    server.add_service(proxy);
    server.run_forever()
}
