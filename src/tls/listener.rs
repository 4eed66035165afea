//! HTTPS listeners on Pingora's openssl backend: the certificate chosen by
//! SNI in every handshake (from the reloadable [`CertStore`]), TLS 1.2 or
//! 1.3 minimum with Mozilla-intermediate ciphers, ALPN h2 + http/1.1, and
//! client certificates verified against a CA (mutual TLS). What the
//! handshake learned reaches the HTTP layer as a [`TlsConn`] in the
//! connection's `SslDigest` extension; [`conn`] reads it.

use super::certs::{CertKey, CertStore};
use crate::config::{ClientAuthMode, ListenerTlsConfig, TlsVersion};
use crate::identity::cert::PeerIdentity;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use pingora_core::tls::hash::{hash, MessageDigest};
use pingora_core::tls::ssl::{
    NameType, SslOptions, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use pingora_core::tls::x509::{X509Name, X509VerifyResult};
use pingora_proxy::Session;
use serde::Serialize;
use std::any::Any;
use std::sync::Arc;

/// The TLS facts of a connection, as the audit records them (`call.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsInfo {
    pub listener: String,
    pub version: &'static str,
    pub cipher: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

/// What the HTTP layer learns about a TLS connection, once per connection.
#[derive(Debug)]
pub struct TlsConn {
    pub info: Arc<TlsInfo>,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<Arc<PeerIdentity>>,
    /// The listener requires a client certificate (`client_auth.mode: required`).
    pub client_cert_required: bool,
}

/// The TLS facts of this request's connection (`None` on plain HTTP).
pub fn conn(session: &Session) -> Option<&TlsConn> {
    session
        .as_downstream()
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<TlsConn>()
}

struct Callbacks {
    listener: Arc<str>,
    client_cert_required: bool,
    certs: CertStore,
    metrics: Arc<Metrics>,
}

fn use_cert(ssl: &mut TlsRef, ck: &CertKey) -> Result<(), pingora_core::tls::error::ErrorStack> {
    ext::ssl_use_certificate(ssl, &ck.chain[0])?;
    ext::ssl_use_private_key(ssl, &ck.key)?;
    for intermediate in &ck.chain[1..] {
        ext::ssl_add_chain_cert(ssl, intermediate)?;
    }
    Ok(())
}

#[async_trait]
impl TlsAccept for Callbacks {
    /// Runs in every handshake, after the ClientHello: the certificate for
    /// the SNI from the current store.
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let certs = self.certs.load();
        let ck = certs.select(ssl.servername(NameType::HOST_NAME));
        if let Err(e) = use_cert(ssl, ck) {
            // Pingora's callback cannot fail: without a certificate the
            // handshake fails ("no shared cipher").
            log::error!("listener {}: cannot use certificate: {e}", self.listener);
        }
    }

    /// Runs once the handshake succeeded. A client certificate that failed
    /// verification has aborted the handshake already; check anyway.
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let version = ssl.version_str();
        self.metrics
            .tls_handshakes
            .with_label_values(&[&*self.listener, version])
            .inc();
        let client_cert = ssl
            .peer_certificate()
            .filter(|_| ssl.verify_result() == X509VerifyResult::OK)
            .map(|c| Arc::new(PeerIdentity::from_x509(&c)));
        Some(Arc::new(TlsConn {
            info: Arc::new(TlsInfo {
                listener: self.listener.to_string(),
                version,
                cipher: ssl.current_cipher().map_or("", |c| c.name()),
                sni: ssl.servername(NameType::HOST_NAME).map(str::to_owned),
            }),
            client_cert,
            client_cert_required: self.client_cert_required,
        }))
    }
}

/// The `TlsSettings` of one HTTPS listener named `name`; `at` is its config
/// key (`listeners[0].tls`) for messages.
pub fn tls_settings(
    name: &str,
    at: &str,
    cfg: &ListenerTlsConfig,
    certs: CertStore,
    metrics: Arc<Metrics>,
) -> Result<TlsSettings, String> {
    let listener: Arc<str> = Arc::from(name);
    let auth = cfg.client_auth.as_ref();
    let callbacks = Box::new(Callbacks {
        listener: listener.clone(),
        client_cert_required: auth.is_some_and(|a| a.mode == ClientAuthMode::Required),
        certs,
        metrics: metrics.clone(),
    });
    // Mozilla intermediate v5: no TLS 1.0/1.1, ECDHE+AEAD suites for TLS
    // 1.2, the three TLS 1.3 suites. The certificate comes from the callback.
    let mut s = TlsSettings::with_callbacks(callbacks).map_err(|e| format!("{at}: {e}"))?;
    let min = match cfg.min_version {
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    };
    s.set_min_proto_version(Some(min))
        .map_err(|e| format!("{at}.min_version: {e}"))?;
    if let Some(ciphers) = &cfg.ciphers {
        s.set_cipher_list(ciphers).map_err(|_| {
            format!(
                "{at}.ciphers: OpenSSL accepts no cipher in `{ciphers}` (see `openssl ciphers`)"
            )
        })?;
    }
    // Resumed sessions on a listener that verifies clients fail without a
    // session id context (SSL_R_SESSION_ID_CONTEXT_UNINITIALIZED). At most 32 bytes.
    let sid = hash(MessageDigest::sha256(), name.as_bytes()).map_err(|e| e.to_string())?;
    s.set_session_id_context(&sid[..32])
        .map_err(|e| format!("{at}: {e}"))?;
    if cfg.http2 {
        s.enable_h2();
    }
    let Some(auth) = auth else {
        return Ok(s);
    };
    // No resumption where certificates are identities: a resumed session
    // skips verification, so a certificate that has expired since (a
    // short-lived SVID, say) would go on identifying its holder.
    s.set_options(SslOptions::NO_TICKET);
    s.set_session_cache_mode(SslSessionCacheMode::OFF);
    let ca = auth.ca.as_str();
    let ca_at = format!("{at}.client_auth.ca");
    super::certs::load_ca(ca).map_err(|e| format!("{ca_at}: {e}"))?;
    s.set_ca_file(ca)
        .map_err(|e| format!("{ca_at}: {ca}: {e}"))?;
    // The CA names sent in the CertificateRequest, so clients pick the right certificate.
    let names = X509Name::load_client_ca_file(ca).map_err(|e| format!("{ca_at}: {ca}: {e}"))?;
    s.set_client_ca_list(names);
    let mut mode = SslVerifyMode::PEER;
    if auth.reject_in_handshake {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    s.set_verify_callback(mode, move |ok, chain| {
        if !ok {
            metrics
                .tls_client_cert_refused
                .with_label_values(&[&*listener])
                .inc();
            let subject = chain
                .current_cert()
                .map(|c| format!("{:?}", c.subject_name()))
                .unwrap_or_default();
            log::warn!(
                "listener {listener}: client certificate refused: {} (depth {}, {subject})",
                chain.error(),
                chain.error_depth()
            );
        }
        ok
    });
    Ok(s)
}
