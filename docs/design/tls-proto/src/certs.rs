//! Certificate files: loading a cert chain + key, the checks `modelgate -t`
//! runs on them, and the SNI store that listener handshakes read.
//!
//! The store sits behind an `ArcSwap`: every handshake loads the current
//! `SniCerts` in `certificate_callback`, so swapping in a re-read set changes
//! the certificate of *new* handshakes and leaves established connections
//! alone (hot reload without dropping anything; see `reload`).

use arc_swap::ArcSwap;
use openssl::asn1::Asn1Time;
use pingora_core::tls::nid::Nid;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;
use std::collections::HashMap;
use std::sync::Arc;

/// Days before `notAfter` from which the config check warns.
pub const EXPIRY_WARNING_DAYS: i32 = 30;

/// A certificate chain (leaf first) and its private key, checked.
pub struct CertKey {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// Names this certificate serves: its SAN DNS entries, else its CN.
    pub names: Vec<String>,
    /// `notAfter` of the leaf, as OpenSSL prints it.
    pub not_after: String,
}

/// Where a certificate comes from: the YAML `cert`/`key` pair.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: String,
    pub key: String,
}

/// Reads and checks a cert+key pair: both readable and PEM, the key matches
/// the leaf, the leaf is inside its validity window. Returns warnings (near
/// expiry) beside the pair; `Err` is a message naming the file.
pub fn load(files: &CertFiles) -> Result<(CertKey, Vec<String>), String> {
    let (cert_path, key_path) = (files.cert.as_str(), files.key.as_str());
    let pem = std::fs::read(cert_path).map_err(|e| format!("cannot read {cert_path}: {e}"))?;
    let chain = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain ({e})"))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{cert_path}: no certificate in the file"));
    };
    let key_pem = std::fs::read(key_path).map_err(|e| format!("cannot read {key_path}: {e}"))?;
    let key = PKey::private_key_from_pem(&key_pem)
        .map_err(|e| format!("{key_path}: not a PEM private key ({e})"))?;
    let public = leaf
        .public_key()
        .map_err(|e| format!("{cert_path}: unreadable public key ({e})"))?;
    if !public.public_eq(&key) {
        return Err(format!(
            "{key_path} is not the private key of {cert_path} (they do not match)"
        ));
    }
    let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
    if leaf.not_after() < now {
        return Err(format!("{cert_path}: expired on {}", leaf.not_after()));
    }
    if leaf.not_before() > now {
        return Err(format!(
            "{cert_path}: not valid before {}",
            leaf.not_before()
        ));
    }
    let mut warnings = Vec::new();
    let left = now.diff(leaf.not_after()).map_err(|e| e.to_string())?;
    if left.days < EXPIRY_WARNING_DAYS {
        warnings.push(format!(
            "{cert_path}: expires in {} days ({})",
            left.days,
            leaf.not_after()
        ));
    }
    let mut names: Vec<String> = leaf
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            leaf.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase())),
        );
    }
    let not_after = leaf.not_after().to_string();
    Ok((
        CertKey {
            chain,
            key,
            names,
            not_after,
        },
        warnings,
    ))
}

/// The certificates of one listener, by server name. The first is the
/// default: served when the client sends no SNI or one nothing matches.
pub struct SniCerts {
    by_name: HashMap<String, Arc<CertKey>>,
    default: Arc<CertKey>,
}

impl SniCerts {
    pub fn new(certs: Vec<CertKey>) -> Result<SniCerts, String> {
        let mut by_name = HashMap::new();
        let mut default = None;
        for ck in certs {
            let ck = Arc::new(ck);
            for name in &ck.names {
                if by_name.insert(name.clone(), ck.clone()).is_some() {
                    return Err(format!("two certificates claim the name {name}"));
                }
            }
            default.get_or_insert(ck);
        }
        let default = default.ok_or("a TLS listener needs at least one certificate")?;
        Ok(SniCerts { by_name, default })
    }

    /// Reads every pair; any error keeps the caller's current set.
    pub fn load_all(files: &[CertFiles]) -> Result<(SniCerts, Vec<String>), String> {
        let mut certs = Vec::new();
        let mut warnings = Vec::new();
        for f in files {
            let (ck, w) = load(f)?;
            certs.push(ck);
            warnings.extend(w);
        }
        Ok((SniCerts::new(certs)?, warnings))
    }

    /// Exact name, then the wildcard one level up, then the default.
    pub fn select(&self, sni: Option<&str>) -> &Arc<CertKey> {
        let Some(sni) = sni else {
            return &self.default;
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ck) = self.by_name.get(&sni) {
            return ck;
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(ck) = self.by_name.get(&format!("*.{parent}")) {
                return ck;
            }
        }
        &self.default
    }
}

/// What handshakes read; `reload` swaps it.
pub type CertStore = Arc<ArcSwap<SniCerts>>;

pub fn store(certs: SniCerts) -> CertStore {
    Arc::new(ArcSwap::from_pointee(certs))
}

/// Re-reads the files and swaps them in when all of them pass the checks;
/// otherwise the old set stays (and the error is returned for the log and a
/// `modelgate_tls_reload_failures_total` counter).
pub fn reload(store: &CertStore, files: &[CertFiles]) -> Result<Vec<String>, String> {
    let (certs, warnings) = SniCerts::load_all(files)?;
    store.store(Arc::new(certs));
    Ok(warnings)
}
