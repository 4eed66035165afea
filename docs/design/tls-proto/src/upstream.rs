//! TLS to upstream pools: per-pool CA bundle (else system roots), hostname
//! verification against `server_name` (the SNI), optional client certificate
//! for upstream mTLS. Everything is loaded once per pool; `peer()` only
//! clones `Arc`s into each `HttpPeer`.

use crate::certs::{self, CertFiles};
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey as PeerCertKey;
use pingora_error::{Error, ErrorType};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

/// `upstreams.<pool>.tls`.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsConfig {
    /// SNI and the name the certificate must carry. Required when hosts are IPs.
    pub server_name: String,
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca: Option<String>,
    /// Client certificate for upstream mTLS.
    pub client_cert: Option<CertFiles>,
    /// Default true; `false` still checks the chain, not the name.
    pub verify_hostname: bool,
}

/// The loaded form, shared by every peer of the pool.
#[derive(Clone)]
pub struct UpstreamTls {
    server_name: String,
    ca: Option<Arc<Box<[X509]>>>,
    client: Option<Arc<PeerCertKey>>,
    verify_hostname: bool,
    /// Separates this pool's connections in Pingora's connection pool:
    /// `HttpPeer`'s reuse hash covers SNI, client cert and verify flags but
    /// NOT `options.ca`, so two pools reaching the same address+SNI with
    /// different CAs would otherwise share verified connections.
    group_key: u64,
}

impl UpstreamTls {
    pub fn build(pool: &str, cfg: &UpstreamTlsConfig) -> Result<UpstreamTls, String> {
        if cfg.server_name.is_empty() {
            // Pingora turns verification OFF when the SNI is empty
            // (connectors/tls/boringssl_openssl/mod.rs:202-206).
            return Err(format!("upstreams.{pool}.tls.server_name: required"));
        }
        let ca = match &cfg.ca {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
                let certs = X509::stack_from_pem(&pem)
                    .map_err(|e| format!("{path}: not a PEM bundle ({e})"))?;
                if certs.is_empty() {
                    return Err(format!("{path}: no certificate"));
                }
                Some(Arc::new(certs.into_boxed_slice()))
            }
        };
        let client = match &cfg.client_cert {
            None => None,
            Some(files) => {
                let (ck, _warnings) = certs::load(files)?;
                Some(Arc::new(PeerCertKey::new(ck.chain, ck.key)))
            }
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pool.hash(&mut h);
        Ok(UpstreamTls {
            server_name: cfg.server_name.clone(),
            ca,
            client,
            verify_hostname: cfg.verify_hostname,
            group_key: h.finish(),
        })
    }

    /// An HTTPS peer for one host of the pool.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.server_name.clone());
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
        let o = &mut peer.options;
        o.verify_cert = true;
        o.verify_hostname = self.verify_hostname;
        o.ca = self.ca.clone();
        peer
    }
}

/// The `kind` label of `modelgate_upstream_errors_total` for an error.
///
/// With TLS 1.3 the client side of the handshake completes before the server
/// has checked the client certificate, so an upstream that refuses ours (or
/// its absence) shows up *after* connect, as a `ReadError` whose cause is
/// the alert ("tlsv13 alert certificate required", "alert unknown ca"), in
/// `error_while_proxy`, not `fail_to_connect`.
pub fn error_kind(e: &Error) -> &'static str {
    use ErrorType::*;
    if matches!(e.etype(), ReadError | WriteError | ConnectionClosed) {
        let cause = e.root_cause().to_string();
        if cause.contains("alert certificate required")
            || cause.contains("alert unknown ca")
            || cause.contains("alert bad certificate")
            || cause.contains("alert certificate expired")
        {
            return "tls_client_cert_refused";
        }
        if cause.contains("SSL alert number") {
            return "tls_alert";
        }
    }
    match e.etype() {
        // openssl backend: the handshake failed AND verify_result != OK
        // (protocols/tls/boringssl_openssl/client.rs:72-79).
        InvalidCert => "tls_verify",
        TLSHandshakeFailure => "tls_handshake",
        ConnectTimedout | ReadTimedout | WriteTimedout => "timeout",
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError => "connect",
        _ => "io",
    }
}
