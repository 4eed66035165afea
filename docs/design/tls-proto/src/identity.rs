//! Client certificates as identities: what a verified peer certificate says
//! (subject CN/OU, SAN DNS/URI/email, serial, fingerprint), read once per
//! connection in the handshake, and how it maps to a configured client name
//! and groups, like an API key or a JWT does.

use pingora_core::tls::hash::MessageDigest;
use pingora_core::tls::nid::Nid;
use pingora_core::tls::x509::X509Ref;

/// The parts of a verified client certificate that identity, policy and
/// audit use. Built in `handshake_complete_callback`; the session reads it
/// from `SslDigest::extension` (shared by every request of the connection,
/// HTTP/2 streams included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub common_name: Option<String>,
    pub organizational_units: Vec<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    /// Hex serial number, for audit.
    pub serial: String,
    /// Hex SHA-256 of the DER certificate, for audit and pinning.
    pub sha256: String,
}

impl PeerIdentity {
    pub fn from_x509(cert: &X509Ref) -> PeerIdentity {
        let text = |nid| -> Vec<String> {
            cert.subject_name()
                .entries_by_nid(nid)
                .filter_map(|e| e.data().to_string().ok())
                .collect()
        };
        let mut id = PeerIdentity {
            common_name: text(Nid::COMMONNAME).into_iter().next(),
            organizational_units: text(Nid::ORGANIZATIONALUNITNAME),
            serial: cert
                .serial_number()
                .to_bn()
                .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
                .unwrap_or_default(),
            sha256: cert
                .digest(MessageDigest::sha256())
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
                .unwrap_or_default(),
            ..Default::default()
        };
        if let Some(sans) = cert.subject_alt_names() {
            for san in sans.iter() {
                if let Some(d) = san.dnsname() {
                    id.dns.push(d.to_string());
                } else if let Some(u) = san.uri() {
                    id.uris.push(u.to_string());
                } else if let Some(e) = san.email() {
                    id.emails.push(e.to_string());
                }
            }
        }
        id
    }
}

/// How a `clients[]` entry recognises its certificate (YAML `cert:`).
#[derive(Debug, Clone)]
pub enum CertMatch {
    CommonName(String),
    Dns(String),
    Uri(String),
    Email(String),
}

impl CertMatch {
    fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            CertMatch::CommonName(cn) => id.common_name.as_deref() == Some(cn.as_str()),
            CertMatch::Dns(d) => id.dns.iter().any(|x| x.eq_ignore_ascii_case(d)),
            CertMatch::Uri(u) => id.uris.iter().any(|x| x == u),
            CertMatch::Email(e) => id.emails.iter().any(|x| x.eq_ignore_ascii_case(e)),
        }
    }
}

/// A configured client identified by certificate.
#[derive(Debug, Clone)]
pub struct CertClient {
    pub name: String,
    pub groups: Vec<String>,
    pub matcher: CertMatch,
}

/// The certificate half of modelgate's `ClientRegistry`.
#[derive(Debug, Clone, Default)]
pub struct CertClients(pub Vec<CertClient>);

impl CertClients {
    /// The first configured client whose matcher holds.
    pub fn lookup(&self, id: &PeerIdentity) -> Option<&CertClient> {
        self.0.iter().find(|c| c.matcher.matches(id))
    }
}
