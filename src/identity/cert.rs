//! Client certificates as identities: what a verified peer certificate says
//! (subject CN/OU, SAN DNS/URI/e-mail, serial, fingerprint), read once per
//! connection by the TLS listener, and how a `clients[].cert` entry
//! recognises it. Verifying the certificate is the listener's business
//! (`crate::tls::listener`); this module only reads and matches.

use crate::config::CertMatchConfig;
use pingora_core::tls::hash::MessageDigest;
use pingora_core::tls::nid::Nid;
use pingora_core::tls::x509::X509Ref;
use serde::Serialize;

/// The parts of a verified client certificate that identity, policy and
/// audit use. Shared by every request of the connection (HTTP/2 streams
/// included).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cn: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ou: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uri: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub email: Vec<String>,
    /// The issuer's distinguished name (`CN=…,O=…`), for the audit trail.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer: String,
    /// Hex serial number.
    pub serial: String,
    /// Hex SHA-256 of the DER certificate.
    pub sha256: String,
}

impl PeerIdentity {
    pub fn from_x509(cert: &X509Ref) -> PeerIdentity {
        // `to_string`, not the deprecated `as_utf8`: that one stops at an
        // interior NUL, so a CN `admin\0x` would read as `admin`.
        let text = |nid| -> Vec<String> {
            cert.subject_name()
                .entries_by_nid(nid)
                .filter_map(|e| e.data().to_string().ok())
                .collect()
        };
        let mut id = PeerIdentity {
            cn: text(Nid::COMMONNAME).into_iter().next(),
            ou: text(Nid::ORGANIZATIONALUNITNAME),
            issuer: cert
                .issuer_name()
                .entries()
                .map(|e| {
                    let key = e.object().nid().short_name().unwrap_or("?");
                    let value = e.data().to_string().unwrap_or_default();
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join(","),
            serial: cert
                .serial_number()
                .to_bn()
                .and_then(|bn| bn.to_hex_str().map(|s| s.to_ascii_lowercase()))
                .unwrap_or_default(),
            sha256: cert
                .digest(MessageDigest::sha256())
                .map(hex::encode)
                .unwrap_or_default(),
            ..Default::default()
        };
        for san in cert.subject_alt_names().iter().flatten() {
            if let Some(d) = san.dnsname() {
                id.dns.push(d.to_string());
            } else if let Some(u) = san.uri() {
                id.uri.push(u.to_string());
            } else if let Some(e) = san.email() {
                id.email.push(e.to_string());
            }
        }
        id
    }

    /// How error messages and audit reasons name the certificate: subject
    /// CN (else the first URI or DNS SAN), serial and issuer.
    pub fn describe(&self) -> String {
        let subject = match (&self.cn, self.uri.first(), self.dns.first()) {
            (Some(cn), _, _) => format!("CN={cn}, "),
            (None, Some(uri), _) => format!("URI={uri}, "),
            (None, None, Some(dns)) => format!("DNS={dns}, "),
            _ => String::new(),
        };
        format!("{subject}serial {}, issued by {}", self.serial, self.issuer)
    }
}

/// How a `clients[]` entry recognises its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatch {
    CommonName(String),
    Dns(String),
    Uri(String),
    Email(String),
}

impl CertMatch {
    /// From a validated `clients[].cert` (exactly one key set).
    pub fn from_config(c: &CertMatchConfig) -> Option<CertMatch> {
        match c {
            CertMatchConfig { cn: Some(v), .. } => Some(CertMatch::CommonName(v.clone())),
            CertMatchConfig { dns: Some(v), .. } => Some(CertMatch::Dns(v.clone())),
            CertMatchConfig { uri: Some(v), .. } => Some(CertMatch::Uri(v.clone())),
            CertMatchConfig { email: Some(v), .. } => Some(CertMatch::Email(v.clone())),
            _ => None,
        }
    }

    pub fn matches(&self, id: &PeerIdentity) -> bool {
        match self {
            CertMatch::CommonName(cn) => id.cn.as_deref() == Some(cn.as_str()),
            CertMatch::Dns(d) => id.dns.iter().any(|x| x.eq_ignore_ascii_case(d)),
            CertMatch::Uri(u) => id.uri.iter().any(|x| x == u),
            CertMatch::Email(e) => id.email.iter().any(|x| x.eq_ignore_ascii_case(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PeerIdentity {
        PeerIdentity {
            cn: Some("alice".into()),
            dns: vec!["alice.clients.corp".into()],
            uri: vec!["spiffe://corp/ns/ml/sa/alice".into()],
            email: vec!["alice@corp.test".into()],
            ..Default::default()
        }
    }

    #[test]
    fn each_kind_of_match() {
        let id = id();
        assert!(CertMatch::CommonName("alice".into()).matches(&id));
        assert!(!CertMatch::CommonName("Alice".into()).matches(&id));
        assert!(CertMatch::Dns("ALICE.clients.corp".into()).matches(&id));
        assert!(CertMatch::Uri("spiffe://corp/ns/ml/sa/alice".into()).matches(&id));
        assert!(!CertMatch::Uri("spiffe://corp/ns/ml/sa/alic".into()).matches(&id));
        assert!(CertMatch::Email("Alice@Corp.test".into()).matches(&id));
        assert!(!CertMatch::Email("bob@corp.test".into()).matches(&id));
    }

    #[test]
    fn from_config_takes_the_one_key() {
        let c = CertMatchConfig {
            uri: Some("spiffe://x".into()),
            ..Default::default()
        };
        assert_eq!(
            CertMatch::from_config(&c),
            Some(CertMatch::Uri("spiffe://x".into()))
        );
        assert_eq!(CertMatch::from_config(&CertMatchConfig::default()), None);
    }
}
