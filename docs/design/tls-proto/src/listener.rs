//! HTTPS listeners on Pingora's openssl backend: SNI certificate choice in
//! `certificate_callback`, TLS 1.2 minimum with Mozilla-intermediate ciphers,
//! ALPN h2 + http/1.1, and optional/required client certificates from a CA,
//! whose verified subject is handed to the HTTP layer through
//! `handshake_complete_callback` -> `SslDigest::extension`.

use crate::certs::{CertKey, CertStore};
use crate::identity::PeerIdentity;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use pingora_core::tls::hash::{hash, MessageDigest};
use pingora_core::tls::ssl::{NameType, SslVerifyMode, SslVersion};
use pingora_core::tls::x509::{X509Name, X509VerifyResult};
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `listeners[].tls.client_auth` (YAML `mode` + `ca`).
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificates asked for.
    Off,
    /// Asked for; a certificate that is sent must verify against `ca`; a
    /// connection without one authenticates with API key / JWT instead.
    Optional { ca: String },
    /// A certificate is required and must verify against `ca`. A certificate
    /// that does not verify always fails the handshake. A *missing* one:
    /// with `in_handshake` the handshake fails too (no HTTP at all; the
    /// client sees a TLS alert); without it (the default, as nginx's
    /// `ssl_verify_client on`) the request gets a JSON 401
    /// `client_certificate_required`, counted and audited like any refusal.
    Required { ca: String, in_handshake: bool },
}

/// What the HTTP layer learns about a TLS connection (the `SslDigest`
/// extension set by the handshake callback).
#[derive(Debug, Clone)]
pub struct TlsConn {
    /// The listener's configured name (metrics, audit, per-listener rules).
    pub listener: Arc<str>,
    pub sni: Option<String>,
    /// The verified client certificate, if one was presented.
    pub client_cert: Option<PeerIdentity>,
    /// The listener requires one (the HTTP layer answers 401 without it).
    pub client_cert_required: bool,
}

/// Counters a real implementation exports as Prometheus metrics.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Client certificates that failed verification.
    pub client_cert_refused: AtomicU64,
    pub handshakes: AtomicU64,
}

struct Callbacks {
    listener: Arc<str>,
    client_cert_required: bool,
    certs: CertStore,
    stats: Arc<ListenerStats>,
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
    /// Runs in every handshake (OpenSSL's cert callback, after ClientHello):
    /// picks the certificate for the SNI from the *current* store.
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
        let certs = self.certs.load();
        let ck = certs.select(sni.as_deref());
        if let Err(e) = use_cert(ssl, ck) {
            // No certificate set: the handshake then fails ("no shared cipher").
            log::error!("listener {}: cannot use certificate: {e}", self.listener);
        }
    }

    /// Runs once the handshake succeeded. The peer certificate is only
    /// there if it verified (a failed verification aborts the handshake
    /// before this), but check `verify_result` anyway.
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        let client_cert = ssl
            .peer_certificate()
            .filter(|_| ssl.verify_result() == X509VerifyResult::OK)
            .map(|c| PeerIdentity::from_x509(&c));
        Some(Arc::new(TlsConn {
            listener: self.listener.clone(),
            sni: ssl.servername(NameType::HOST_NAME).map(str::to_owned),
            client_cert,
            client_cert_required: self.client_cert_required,
        }))
    }
}

/// The `TlsSettings` of one HTTPS listener.
pub fn tls_settings(
    name: &str,
    certs: CertStore,
    client_auth: &ClientAuth,
    http2: bool,
    stats: Arc<ListenerStats>,
) -> Result<TlsSettings, String> {
    let listener: Arc<str> = Arc::from(name);
    let callbacks = Box::new(Callbacks {
        listener: listener.clone(),
        client_cert_required: matches!(client_auth, ClientAuth::Required { .. }),
        certs,
        stats: stats.clone(),
    });
    // Mozilla intermediate v5 (openssl crate): no TLS 1.0/1.1, ECDHE+AEAD
    // TLS 1.2 suites, the three TLS 1.3 suites. No certificate: the callback
    // sets one per handshake.
    let mut s = TlsSettings::with_callbacks(callbacks).map_err(|e| e.to_string())?;
    s.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| e.to_string())?;
    // Session resumption with client verification needs a session id
    // context, else OpenSSL fails resumed handshakes
    // (SSL_R_SESSION_ID_CONTEXT_UNINITIALIZED). At most 32 bytes.
    let sid = hash(MessageDigest::sha256(), name.as_bytes()).map_err(|e| e.to_string())?;
    s.set_session_id_context(&sid[..32])
        .map_err(|e| e.to_string())?;
    if http2 {
        s.enable_h2();
    }
    let (ca, in_handshake) = match client_auth {
        ClientAuth::Off => return Ok(s),
        ClientAuth::Optional { ca } => (ca, false),
        ClientAuth::Required { ca, in_handshake } => (ca, *in_handshake),
    };
    // Trust store for client chains, and the CA names sent in CertificateRequest.
    s.set_ca_file(ca)
        .map_err(|e| format!("client_auth.ca {ca}: {e}"))?;
    s.set_client_ca_list(
        X509Name::load_client_ca_file(ca).map_err(|e| format!("client_auth.ca {ca}: {e}"))?,
    );
    let mut mode = SslVerifyMode::PEER;
    if in_handshake {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    s.set_verify_callback(mode, move |ok, chain| {
        if !ok {
            stats.client_cert_refused.fetch_add(1, Ordering::Relaxed);
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
