//! TLS to upstream pools: the per-pool CA bundle (else the system roots),
//! the name the host certificate must carry (the SNI), an optional client
//! certificate for upstream mutual TLS. Files are read once when the pool is
//! built; [`UpstreamTls::apply`] only clones `Arc`s into each `HttpPeer`.
//! Also classifies TLS failures for `modelgate_upstream_errors_total`.

use super::certs;
use crate::config::{CertKeyFiles, UpstreamTlsConfig};
use pingora_core::tls::x509::X509;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use pingora_error::{Error, ErrorType};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// `upstreams.<pool>.tls`, loaded; shared by every peer of the pool.
#[derive(Clone)]
pub struct UpstreamTls {
    /// `server_name`, else each host's own name.
    pub server_name: Option<String>,
    ca: Option<Arc<Box<[X509]>>>,
    client: Option<Arc<CertKey>>,
    verify: bool,
    verify_hostname: bool,
    alternative_name: Option<String>,
    /// Keeps this pool's connections apart in Pingora's connection pool:
    /// `HttpPeer`'s reuse hash covers SNI, client certificate and verify
    /// flags but not `options.ca`, so two pools reaching the same address
    /// and name with different CAs would share verified connections.
    group_key: u64,
}

impl UpstreamTls {
    /// Reads the CA bundle and client certificate; `at` is the config key
    /// (`upstreams.<pool>.tls`). Also returns warnings: a client certificate
    /// close to expiry, verification turned off.
    pub fn build(
        pool: &str,
        at: &str,
        cfg: &UpstreamTlsConfig,
        warn_within: Duration,
    ) -> Result<(UpstreamTls, Vec<String>), String> {
        let ca = match &cfg.ca {
            None => None,
            Some(path) => {
                let certs = certs::load_ca(path).map_err(|e| format!("{at}.ca: {e}"))?;
                Some(Arc::new(certs.into_boxed_slice()))
            }
        };
        let (client, expiry) = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                let files = CertKeyFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                let (ck, w) = certs::load(&files, warn_within, certs::Validity::Required)
                    .map_err(|e| format!("{at}.client_cert: {e}"))?;
                (
                    Some(Arc::new(CertKey::new(ck.chain, ck.key))),
                    w.map(|w| format!("{at}.client_cert: {w}")),
                )
            }
            _ => (None, None),
        };
        let mut warnings: Vec<String> = expiry.into_iter().collect();
        if cfg.insecure_skip_verify {
            warnings.push(format!(
                "{at}.insecure_skip_verify: the certificates of pool {pool} are NOT verified"
            ));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ("modelgate upstream pool", pool).hash(&mut h);
        let tls = UpstreamTls {
            server_name: cfg.server_name.clone(),
            ca,
            client,
            verify: !cfg.insecure_skip_verify,
            verify_hostname: cfg.verify_hostname,
            alternative_name: cfg.alternative_name.clone(),
            group_key: h.finish(),
        };
        Ok((tls, warnings))
    }

    /// Makes `peer` an HTTPS peer for a host named `host_name`.
    pub fn apply(&self, peer: &mut HttpPeer, host_name: &str) {
        peer.scheme = pingora_core::upstreams::peer::Scheme::HTTPS;
        // Never empty: Pingora skips verification for an empty SNI.
        peer.sni = self.server_name.as_deref().unwrap_or(host_name).to_string();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
        let o = &mut peer.options;
        o.verify_cert = self.verify;
        o.verify_hostname = self.verify_hostname;
        o.alternative_cn = self.alternative_name.clone();
        o.ca = self.ca.clone();
    }
}

/// The `kind` of a TLS failure with an upstream, for
/// `modelgate_upstream_errors_total`; `None` for other errors.
///
/// With TLS 1.3 the client side of the handshake completes before the server
/// has checked our certificate, so an upstream refusing it (or its absence)
/// shows up after connecting, as a read error whose cause is the alert.
pub fn error_kind(e: &Error) -> Option<&'static str> {
    match e.etype() {
        // openssl backend: the handshake failed and verify_result is not OK.
        ErrorType::InvalidCert => Some("tls_verify"),
        ErrorType::TLSHandshakeFailure => Some("tls_handshake"),
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
            let cause = e.root_cause().to_string();
            if cause.contains("alert certificate required")
                || cause.contains("alert unknown ca")
                || cause.contains("alert bad certificate")
                || cause.contains("alert certificate expired")
            {
                Some("tls_client_cert_refused")
            } else {
                None
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_have_their_own_kinds() {
        let kind = |t: ErrorType| error_kind(&Error::explain(t, "x"));
        assert_eq!(kind(ErrorType::InvalidCert), Some("tls_verify"));
        assert_eq!(kind(ErrorType::TLSHandshakeFailure), Some("tls_handshake"));
        assert_eq!(kind(ErrorType::ConnectRefused), None);
        assert_eq!(kind(ErrorType::ReadError), None);
        // TLS 1.3: the refusal of our certificate arrives as the cause of a read error.
        let refused = Error::because(
            ErrorType::ReadError,
            "while reading the response header",
            Error::explain(
                ErrorType::ReadError,
                "error:0A00045C:SSL routines::tlsv13 alert certificate required",
            ),
        );
        assert_eq!(error_kind(&refused), Some("tls_client_cert_refused"));
    }
}
