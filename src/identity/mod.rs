//! Client identity: who is calling. Owns API-key authentication (keys stored
//! only as SHA-256, compared in constant time), JWT bearer tokens ([`jwt`]),
//! client certificates ([`cert`]) and the [`Client`] identity that later stages (policy, metrics, audit)
//! read. Not for authorisation: what a client may do is the policy's business.

pub mod cert;
pub mod jwt;

use crate::config::ClientConfig;
use cert::{CertMatch, PeerIdentity};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The configured name (API-key and certificate clients), or the JWT subject.
    pub name: String,
    pub groups: Vec<String>,
    /// How the caller proved who it is.
    pub via: Via,
    /// What metrics call this client: the configured name for API-key
    /// clients; for JWT callers (unbounded subjects) `jwt:<group>` for the
    /// first of their groups the configuration names, else `jwt`.
    pub label: Arc<str>,
    /// The verified client certificate, for `Via::ClientCert`.
    pub cert: Option<Arc<PeerIdentity>>,
}

/// The credential a caller presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    Jwt,
    /// A verified TLS client certificate (mutual TLS).
    ClientCert,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::ApiKey => "api_key",
            Via::Jwt => "jwt",
            Via::ClientCert => "client_cert",
        }
    }
}

/// Why a request was not authenticated; each maps to a 401 message, except
/// `UnknownCertificate` (403: the certificate is valid, the caller unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` nor `x-api-key` header.
    Missing,
    /// A key was presented but matches no client.
    Invalid,
    /// A JWT was presented and refused.
    Jwt(jwt::JwtError),
    /// A valid JWT whose subject is the name of a configured client (API key
    /// or certificate): rules and limits naming that client must not apply to it.
    SubjectIsAClient,
    /// The listener requires a client certificate and none was sent.
    CertificateRequired,
    /// A verified client certificate that no `clients[].cert` names.
    UnknownCertificate,
    /// A verified client certificate that more than one client's match
    /// names: refused rather than decided by configuration order.
    AmbiguousCertificate,
}

impl AuthError {
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "Missing API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`."
            }
            AuthError::Invalid => "Invalid API key.",
            AuthError::Jwt(e) => e.message(),
            AuthError::SubjectIsAClient => {
                "Invalid token: its subject is the name of an API-key client or certificate client of this gateway."
            }
            AuthError::CertificateRequired => {
                "This listener requires a client certificate (mutual TLS)."
            }
            AuthError::UnknownCertificate => {
                "The client certificate is valid but names no client of this gateway."
            }
            AuthError::AmbiguousCertificate => {
                "The client certificate matches more than one client of this gateway."
            }
        }
    }

    /// The OpenAI-style `code` of the 401.
    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Invalid => "invalid_api_key",
            AuthError::Jwt(e) => e.code(),
            AuthError::SubjectIsAClient => "subject_conflict",
            AuthError::CertificateRequired => "client_certificate_required",
            AuthError::UnknownCertificate => "unknown_client_certificate",
            AuthError::AmbiguousCertificate => "ambiguous_client_certificate",
        }
    }

    /// 401, or 403 for a known-good certificate of an unknown caller.
    pub fn status(self) -> u16 {
        match self {
            AuthError::UnknownCertificate | AuthError::AmbiguousCertificate => 403,
            _ => 401,
        }
    }
}

/// The configured clients, keyed by the SHA-256 of their key.
///
/// ```
/// use modelgate::identity::{ClientRegistry, sha256_hex};
/// use modelgate::config::ClientConfig;
/// let reg = ClientRegistry::new(&[ClientConfig {
///     name: "alice".into(),
///     key_sha256: Some(sha256_hex("k-alice")),
///     cert: None,
///     groups: vec!["analysts".into()],
/// }]);
/// assert_eq!(reg.authenticate_key("k-alice").unwrap().name, "alice");
/// assert!(reg.authenticate_key("k-mallory").is_none());
/// ```
pub struct ClientRegistry {
    entries: Vec<([u8; 32], Arc<Client>)>,
    /// Clients identified by certificate: the match, the listeners it
    /// applies to (empty: every listener), the client.
    by_cert: Vec<(CertMatch, Vec<String>, Arc<Client>)>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    /// Groups a JWT caller's metrics label may name (bounded by the config).
    label_groups: Vec<String>,
}

impl ClientRegistry {
    /// Builds the registry. `key_sha256` values must already be validated hex.
    pub fn new(clients: &[ClientConfig]) -> Self {
        let mut entries = Vec::new();
        let mut by_cert = Vec::new();
        for c in clients {
            let client = Arc::new(Client {
                name: c.name.clone(),
                groups: c.groups.clone(),
                via: Via::ApiKey,
                label: Arc::from(c.name.as_str()),
                cert: None,
            });
            if let Some(key) = &c.key_sha256 {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(key.to_ascii_lowercase(), &mut digest)
                    .expect("key_sha256 validated at config load");
                entries.push((digest, client.clone()));
            }
            if let Some(m) = c.cert.as_ref().and_then(CertMatch::from_config) {
                let via_cert = Client {
                    via: Via::ClientCert,
                    ..(*client).clone()
                };
                let listeners = c.cert.as_ref().map_or(Vec::new(), |m| m.listeners.clone());
                by_cert.push((m, listeners, Arc::new(via_cert)));
            }
        }
        ClientRegistry {
            entries,
            by_cert,
            jwt: None,
            label_groups: Vec::new(),
        }
    }

    /// Also accepts JWT bearer tokens checked by `verifier`. A JWT caller's
    /// metrics label names the first of its groups found in `label_groups`.
    pub fn with_jwt(mut self, verifier: Arc<jwt::JwtVerifier>, label_groups: Vec<String>) -> Self {
        self.jwt = Some(verifier);
        self.label_groups = label_groups;
        self
    }

    /// The JWT verifier, whose key refresh runs as a background service.
    pub fn jwt(&self) -> Option<&Arc<jwt::JwtVerifier>> {
        self.jwt.as_ref()
    }

    /// Number of API-key clients.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The client a certificate verified on `listener` names: the one
    /// `clients[]` entry whose `cert` matches there (none: unknown; two or
    /// more: ambiguous). The certificate itself rides along for audit.
    pub fn authenticate_cert(
        &self,
        id: &Arc<PeerIdentity>,
        listener: &str,
    ) -> Result<Arc<Client>, AuthError> {
        let mut found = self.by_cert.iter().filter(|(m, on, _)| {
            (on.is_empty() || on.iter().any(|l| l == listener)) && m.matches(id)
        });
        let (_, _, client) = found.next().ok_or(AuthError::UnknownCertificate)?;
        if found.next().is_some() {
            return Err(AuthError::AmbiguousCertificate);
        }
        Ok(Arc::new(Client {
            cert: Some(id.clone()),
            ..(**client).clone()
        }))
    }

    /// Finds the client owning `key`. Every configured digest is compared, in
    /// constant time, whether or not an earlier one matched, so timing reveals
    /// neither which client matched nor how much of a digest did.
    pub fn authenticate_key(&self, key: &str) -> Option<Arc<Client>> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u64;
        for (i, (digest, _)) in self.entries.iter().enumerate() {
            let hit = digest.ct_eq(&presented);
            index.conditional_assign(&(i as u64), hit & !found);
            found |= hit;
        }
        bool::from(found).then(|| self.entries[index as usize].1.clone())
    }

    /// Authenticates a request from its headers: `Authorization: Bearer <key>`
    /// or `x-api-key: <key>`; with JWT configured, a bearer value shaped
    /// like a JWT is checked as one.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Client>, AuthError> {
        let key = presented_key(headers).ok_or(AuthError::Missing)?;
        if let Some(verifier) = &self.jwt {
            if jwt::looks_like_jwt(key) {
                let id = verifier.verify(key).map_err(AuthError::Jwt)?;
                let key_clients = self.entries.iter().map(|(_, c)| &c.name);
                let cert_clients = self.by_cert.iter().map(|(_, _, c)| &c.name);
                if key_clients.chain(cert_clients).any(|n| *n == id.subject) {
                    return Err(AuthError::SubjectIsAClient);
                }
                let label = match self.label_groups.iter().find(|g| id.groups.contains(g)) {
                    Some(g) => Arc::from(format!("jwt:{g}")),
                    None => Arc::from("jwt"),
                };
                return Ok(Arc::new(Client {
                    name: id.subject,
                    groups: id.groups,
                    via: Via::Jwt,
                    label,
                    cert: None,
                }));
            }
        }
        self.authenticate_key(key).ok_or(AuthError::Invalid)
    }
}

/// The key a client presented, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
            return Some(rest.trim());
        }
        return None;
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Lower-case hex SHA-256 of a key, the form stored in `clients[].key_sha256`.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ClientRegistry {
        let mk = |name: &str, key: &str| ClientConfig {
            name: name.into(),
            key_sha256: Some(sha256_hex(key)),
            cert: None,
            groups: vec![],
        };
        ClientRegistry::new(&[mk("alice", "ka"), mk("bob", "kb"), mk("carol", "kc")])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn finds_each_client_and_rejects_others() {
        let r = registry();
        for (k, n) in [("ka", "alice"), ("kb", "bob"), ("kc", "carol")] {
            assert_eq!(r.authenticate_key(k).unwrap().name, n);
        }
        assert!(r.authenticate_key("kd").is_none());
        assert!(r.authenticate_key("").is_none());
    }

    #[test]
    fn reads_bearer_and_x_api_key() {
        let r = registry();
        let ok = r.authenticate(&headers(&[("authorization", "Bearer kb")]));
        assert_eq!(ok.unwrap().name, "bob");
        let ok = r.authenticate(&headers(&[("authorization", "bearer  kb ")]));
        assert_eq!(ok.unwrap().name, "bob");
        let ok = r.authenticate(&headers(&[("x-api-key", "kc")]));
        assert_eq!(ok.unwrap().name, "carol");
        assert_eq!(r.authenticate(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            r.authenticate(&headers(&[("authorization", "Basic a2E=")])),
            Err(AuthError::Missing)
        );
        assert_eq!(
            r.authenticate(&headers(&[("authorization", "Bearer nope")])),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn certificates_name_configured_clients() {
        let svc = ClientConfig {
            name: "batch".into(),
            key_sha256: None,
            cert: Some(crate::config::CertMatchConfig {
                uri: Some("spiffe://corp/batch".into()),
                ..Default::default()
            }),
            groups: vec!["jobs".into()],
        };
        let both = ClientConfig {
            name: "ops".into(),
            key_sha256: Some(sha256_hex("k-ops")),
            cert: Some(crate::config::CertMatchConfig {
                cn: Some("ops".into()),
                ..Default::default()
            }),
            groups: vec!["admin".into()],
        };
        let r = ClientRegistry::new(&[svc, both]);
        let id = Arc::new(PeerIdentity {
            cn: Some("batch-runner".into()),
            uri: vec!["spiffe://corp/batch".into()],
            serial: "01".into(),
            ..Default::default()
        });
        let c = r.authenticate_cert(&id, "internal").unwrap();
        assert_eq!((c.name.as_str(), c.via), ("batch", Via::ClientCert));
        assert_eq!(c.groups, ["jobs"]);
        assert_eq!(c.cert.as_deref(), Some(&*id));
        // A client with both: the key authenticates as an API key.
        let k = r.authenticate_key("k-ops").unwrap();
        assert_eq!((k.name.as_str(), k.via), ("ops", Via::ApiKey));
        let ops = Arc::new(PeerIdentity {
            cn: Some("ops".into()),
            ..Default::default()
        });
        assert_eq!(
            r.authenticate_cert(&ops, "internal").unwrap().via,
            Via::ClientCert
        );
        let stranger = Arc::new(PeerIdentity {
            cn: Some("mallory".into()),
            ..Default::default()
        });
        assert_eq!(
            r.authenticate_cert(&stranger, "internal"),
            Err(AuthError::UnknownCertificate)
        );
        assert_eq!(AuthError::UnknownCertificate.status(), 403);
        // Certificate-only clients have no key.
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_certificate_match_holds_on_its_listeners_only_and_never_twice() {
        let client = |name: &str, m: crate::config::CertMatchConfig| ClientConfig {
            name: name.into(),
            key_sha256: None,
            cert: Some(m),
            groups: vec![],
        };
        let cn = |v: &str, on: &[&str]| crate::config::CertMatchConfig {
            cn: Some(v.into()),
            listeners: on.iter().map(|l| l.to_string()).collect(),
            ..Default::default()
        };
        let r = ClientRegistry::new(&[
            client("ops", cn("ops-console", &["internal"])),
            client("partner-ops", cn("ops-console", &["partners"])),
            client("by-cn", cn("shared", &[])),
            client(
                "by-uri",
                crate::config::CertMatchConfig {
                    uri: Some("spiffe://corp/b".into()),
                    ..Default::default()
                },
            ),
        ]);
        let id = |cn: &str, uri: &[&str]| {
            Arc::new(PeerIdentity {
                cn: Some(cn.into()),
                uri: uri.iter().map(|u| u.to_string()).collect(),
                ..Default::default()
            })
        };
        // The same CN from another listener's CA is another client.
        let on = |l| {
            r.authenticate_cert(&id("ops-console", &[]), l)
                .map(|c| c.name.clone())
        };
        assert_eq!(on("internal").as_deref(), Ok("ops"));
        assert_eq!(on("partners").as_deref(), Ok("partner-ops"));
        assert_eq!(on("mesh"), Err(AuthError::UnknownCertificate));
        // Two clients' matches on one certificate: refused, not first-wins.
        assert_eq!(
            r.authenticate_cert(&id("shared", &["spiffe://corp/b"]), "internal"),
            Err(AuthError::AmbiguousCertificate)
        );
        assert_eq!(AuthError::AmbiguousCertificate.status(), 403);
    }

    #[test]
    fn hash_matches_sha256sum() {
        // printf %s secret | sha256sum
        assert_eq!(
            sha256_hex("secret"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }
}
