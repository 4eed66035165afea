//! Certificate files: loading a chain and its key with the checks
//! `modelgate -t` runs (readable, PEM, key matches, inside the validity
//! window, warning near expiry), CA bundles, and the per-listener SNI store
//! that handshakes read.
//!
//! The store sits behind an `ArcSwap`: every handshake loads the current
//! [`SniCerts`], so swapping in a re-read set changes the certificate of new
//! handshakes and leaves established connections alone (see `reload`).

use crate::config::CertKeyFiles;
use arc_swap::ArcSwap;
use openssl::asn1::{Asn1Time, Asn1TimeRef};
use pingora_core::tls::nid::Nid;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A checked certificate chain (leaf first) and its private key.
pub struct CertKey {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// Names this certificate serves: its SAN DNS entries, else its CN (lower case).
    pub names: Vec<String>,
    /// `notAfter` of the leaf, in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl CertKey {
    /// How metrics and logs name it: its first name.
    pub fn label(&self) -> &str {
        self.names.first().map_or("-", String::as_str)
    }
}

/// Reads and checks a cert+key pair: both readable and PEM, the key matches
/// the leaf, the leaf is inside its validity window. Returns a warning when
/// it expires within `warn_within`. Errors name the file.
pub fn load(
    files: &CertKeyFiles,
    warn_within: Duration,
    validity: Validity,
) -> Result<(CertKey, Option<String>), String> {
    let (cert_path, key_path) = (files.cert.as_str(), files.key.as_str());
    let chain = read_pem_certs(cert_path)?;
    let leaf = &chain[0];
    let key_pem = std::fs::read(key_path).map_err(|e| format!("cannot read {key_path}: {e}"))?;
    // No pass phrase callback would let OpenSSL prompt on the terminal.
    if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "{key_path}: an encrypted private key; modelgate reads unencrypted PEM keys only \
             (decrypt it with `openssl pkey -in {key_path} -out <new file>`)"
        ));
    }
    let key = PKey::private_key_from_pem_callback(&key_pem, |_| Ok(0))
        .map_err(|_| format!("{key_path}: not a PEM private key"))?;
    let public = leaf
        .public_key()
        .map_err(|e| format!("{cert_path}: unreadable public key ({e})"))?;
    if !public.public_eq(&key) {
        return Err(format!(
            "{key_path} is not the private key of {cert_path} (they do not match)"
        ));
    }
    let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
    let invalid = if leaf.not_after() < now {
        Some(format!("{cert_path}: expired on {}", leaf.not_after()))
    } else if leaf.not_before() > now {
        Some(format!(
            "{cert_path}: not valid before {}",
            leaf.not_before()
        ))
    } else {
        None
    };
    let warning = match (invalid, validity) {
        (Some(e), Validity::Required) => return Err(e),
        (Some(e), Validity::Warn) => Some(e),
        (None, _) => {
            let left = seconds_between(&now, leaf.not_after())?;
            (left < warn_within.as_secs() as i64).then(|| {
                format!(
                    "{cert_path}: expires in {} days ({})",
                    left / 86400,
                    leaf.not_after()
                )
            })
        }
    };
    let mut names: Vec<String> = leaf
        .subject_alt_names()
        .iter()
        .flatten()
        .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
        .collect();
    if names.is_empty() {
        names.extend(
            leaf.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase())),
        );
    }
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let not_after_unix = seconds_between(&epoch, leaf.not_after())?;
    Ok((
        CertKey {
            chain,
            key,
            names,
            not_after_unix,
        },
        warning,
    ))
}

/// A PEM bundle of CA certificates (at least one).
/// What an expired or not-yet-valid certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// An error: `-t`, start and upgrade refuse it.
    Required,
    /// A warning: a reload does not let one lapsed certificate of a
    /// listener hold back the renewal of the others.
    Warn,
}

pub fn load_ca(path: &str) -> Result<Vec<X509>, String> {
    read_pem_certs(path)
}

fn read_pem_certs(path: &str) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let certs =
        X509::stack_from_pem(&pem).map_err(|_| format!("{path}: not a PEM certificate file"))?;
    // A key file parses as an empty stack.
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate in the file"));
    }
    Ok(certs)
}

fn seconds_between(from: &Asn1TimeRef, to: &Asn1TimeRef) -> Result<i64, String> {
    let d = from.diff(to).map_err(|e| e.to_string())?;
    Ok(d.days as i64 * 86400 + d.secs as i64)
}

/// The certificates of one listener, by server name. The first is the
/// default: served when the client sends no SNI or one nothing matches.
pub struct SniCerts {
    by_name: HashMap<String, Arc<CertKey>>,
    all: Vec<Arc<CertKey>>,
}

impl SniCerts {
    pub fn new(certs: Vec<CertKey>) -> Result<SniCerts, String> {
        let mut by_name = HashMap::new();
        let all: Vec<Arc<CertKey>> = certs.into_iter().map(Arc::new).collect();
        for ck in &all {
            for name in &ck.names {
                if by_name.insert(name.clone(), ck.clone()).is_some() {
                    return Err(format!("two certificates claim the name {name}"));
                }
            }
        }
        if all.is_empty() {
            return Err("a TLS listener needs at least one certificate".into());
        }
        Ok(SniCerts { by_name, all })
    }

    /// Reads every pair (`at` is the config key of the list, for messages);
    /// any error means no set, so a caller keeps its current one.
    pub fn load_all(
        at: &str,
        files: &[CertKeyFiles],
        warn_within: Duration,
        validity: Validity,
    ) -> Result<(SniCerts, Vec<String>), String> {
        let mut certs = Vec::new();
        let mut warnings = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let (ck, w) = load(f, warn_within, validity).map_err(|e| format!("{at}[{i}]: {e}"))?;
            certs.push(ck);
            warnings.extend(w.map(|w| format!("{at}[{i}]: {w}")));
        }
        let set = SniCerts::new(certs).map_err(|e| format!("{at}: {e}"))?;
        Ok((set, warnings))
    }

    /// Exact name, then the wildcard one level up, then the default.
    pub fn select(&self, sni: Option<&str>) -> &Arc<CertKey> {
        let Some(sni) = sni else {
            return &self.all[0];
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
        &self.all[0]
    }

    /// Every certificate, in configuration order.
    pub fn all(&self) -> &[Arc<CertKey>] {
        &self.all
    }
}

/// What handshakes read; reload swaps it.
pub type CertStore = Arc<ArcSwap<SniCerts>>;

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn pair(dir: &std::path::Path, name: &str, p: CertificateParams) -> CertKeyFiles {
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let files = CertKeyFiles {
            cert: dir.join(format!("{name}.pem")).display().to_string(),
            key: dir.join(format!("{name}.key")).display().to_string(),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn named(names: &[&str]) -> CertificateParams {
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn soon_after(now: time::OffsetDateTime) -> time::OffsetDateTime {
        now + time::Duration::days(10) - time::Duration::hours(1)
    }

    const MONTH: Duration = Duration::from_secs(30 * 86400);

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            pair(dir.path(), "a", named(&["a.test"])),
            pair(dir.path(), "b", named(&["b.test", "*.b.test"])),
        ];
        let (set, warnings) =
            SniCerts::load_all("certificates", &files, MONTH, Validity::Required).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(set.select(Some("B.test.")).label(), "b.test");
        assert_eq!(set.select(Some("x.b.test")).label(), "b.test");
        assert_eq!(set.select(Some("y.x.b.test")).label(), "a.test");
        assert_eq!(set.select(Some("other.test")).label(), "a.test");
        assert_eq!(set.select(None).label(), "a.test");
        let dup = [files[0].clone(), files[0].clone()];
        let e = SniCerts::load_all("certificates", &dup, MONTH, Validity::Required)
            .err()
            .unwrap();
        assert_eq!(e, "certificates: two certificates claim the name a.test");
    }

    #[test]
    fn checks_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a", named(&["a.test"]));
        let b = pair(dir.path(), "b", named(&["b.test"]));
        let fails = |cert: &str, key: &str, want: &str| {
            let files = CertKeyFiles {
                cert: cert.into(),
                key: key.into(),
            };
            let e = load(&files, MONTH, Validity::Required).err().unwrap();
            assert!(e.contains(want), "wanted `{want}`: {e}");
        };
        let missing = dir.path().join("nope.pem").display().to_string();
        fails(&a.cert, &b.key, "is not the private key of");
        fails(&missing, &a.key, "cannot read ");
        fails(&a.key, &a.key, "no PEM certificate");
        fails(&a.cert, &a.cert, "not a PEM private key");

        let now = time::OffsetDateTime::now_utc();
        let mut old = named(&["old.test"]);
        old.not_before = now - time::Duration::days(30);
        old.not_after = now - time::Duration::days(1);
        let old = pair(dir.path(), "old", old);
        fails(&old.cert, &old.key, "expired on");
        // A reload serves it with a warning, so it holds no other pair back.
        let (_, warning) = load(&old, MONTH, Validity::Warn).unwrap();
        assert!(warning.is_some_and(|w| w.contains("expired on")));
        // An encrypted key is refused with a reason, never a prompt.
        let pkey = PKey::private_key_from_pem(&std::fs::read(&a.key).unwrap()).unwrap();
        let locked = pkey
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pw")
            .unwrap();
        let locked_key = dir.path().join("locked.key").display().to_string();
        std::fs::write(&locked_key, locked).unwrap();
        fails(&a.cert, &locked_key, "an encrypted private key");
        let mut early = named(&["early.test"]);
        early.not_before = now + time::Duration::days(2);
        early.not_after = now + time::Duration::days(90);
        let early = pair(dir.path(), "early", early);
        fails(&early.cert, &early.key, "not valid before");
        let mut soon = named(&["soon.test"]);
        soon.not_after = soon_after(now);
        let soon = pair(dir.path(), "soon", soon);
        let (ck, warning) = load(&soon, MONTH, Validity::Required).unwrap();
        let warning = warning.unwrap();
        assert!(warning.contains("expires in 9 days"), "{warning}");
        let want = (soon_after(now)).unix_timestamp();
        assert!((ck.not_after_unix - want).abs() < 5);
        assert!(load(&soon, Duration::from_secs(86400), Validity::Required)
            .unwrap()
            .1
            .is_none());
    }
}
