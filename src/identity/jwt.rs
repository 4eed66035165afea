//! JWT client identity: the `identity.jwt` config block, the signing keys
//! (a JWKS file, a JWKS URL refreshed in the background, or an HMAC secret)
//! and the verification of a bearer token into a subject and its groups.
//!
//! Owns signature, algorithm, `iss`/`aud`/`exp`/`nbf` checks and key rotation.
//! Not for deciding whether a bearer token is a JWT or an API key beyond
//! [`looks_like_jwt`], nor for what the caller may do (that is the policy's).
//!
//! Verification never blocks: the key set is an `ArcSwap` that the refresh
//! task replaces whole, so a failed fetch simply leaves the last good set.

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Longest wait for a JWKS URL to answer, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted, from a URL or a file.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// An unknown `kid` wakes the refresh task at most this often, so a client
/// sending made-up key ids cannot turn the gateway against the IdP.
const EARLY_REFRESH_MIN_GAP: Duration = Duration::from_secs(30);
/// After a failed refresh the next try comes this soon (or at the interval,
/// if that is shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// RFC 7518 §3.2: an HMAC key at least as long as the hash output.
const MIN_HMAC_SECRET_BYTES: usize = 32;
/// Config keys are reported under this path.
const KEY_PATH: &str = "identity.jwt";

/// The `identity.jwt` config block.
///
/// ```yaml
/// identity:
///   jwt:
///     issuer: https://idp.example.com/realms/main
///     audience: modelgate
///     jwks_url: https://idp.example.com/realms/main/protocol/openid-connect/certs
///     groups_claim: realm_access.roles
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required. The token's `iss` must equal this exactly.
    pub issuer: String,
    /// Required. A string or a list; the token's `aud` (string or list) must
    /// contain at least one of these.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Accepted `alg` values. Default `[RS256, ES256]` with a JWKS,
    /// `[HS256]` with `hmac_secret`. Any of RS256/384/512, PS256/384/512,
    /// ES256/384, EdDSA (JWKS) or HS256/384/512 (`hmac_secret`); never `none`.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// JWKS document on disk, read at start-up and re-read every
    /// `refresh_interval` (rotate by replacing the file). Exactly one of
    /// `jwks_file`, `jwks_url`, `hmac_secret`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL (`http://` or `https://`), fetched in the background every
    /// `refresh_interval`; until the first fetch succeeds every token fails
    /// with "keys unavailable". A failed fetch keeps the last good keys.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Shared HMAC secret for HS256/384/512: the UTF-8 bytes of the string,
    /// as written (not base64), at least 32 bytes. Use `${ENV}` expansion
    /// rather than writing it in the file. Never printed.
    #[serde(default)]
    pub hmac_secret: Option<crate::config::Secret>,
    /// How often the JWKS URL or file is re-read. Default `5m`.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`. Default `30s`, at most `5m`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim naming the client (becomes the client name). Default `sub`.
    /// Same lookup as `groups_claim`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Claim holding the client's groups. Default `groups`. Its value may be
    /// a list of strings or one string of names separated by spaces or
    /// commas. A name that is not a top-level claim is read as a dotted path
    /// into nested objects (`realm_access.roles`). A missing claim means no
    /// groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    crate::config::OneOrMany::deserialize(d)
        .map(|v| v.to_vec())
        .map_err(|_| serde::de::Error::custom("expected a string or a list of strings"))
}

/// Where the verification keys come from.
enum KeySource {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        /// The URL without user info or query, for logs.
        shown: String,
        client: reqwest::Client,
    },
    Secret,
}

impl JwtConfig {
    /// Checks the block, naming the offending key (`identity.jwt.…`).
    /// [`JwtVerifier::new`] calls this; config validation may call it earlier.
    pub fn validate(&self) -> Result<(), String> {
        self.algorithms().map(|_| ())
    }

    /// The effective algorithm list, validated.
    fn algorithms(&self) -> Result<Vec<Algorithm>, String> {
        let at = |key: &str, msg: String| format!("{KEY_PATH}.{key}: {msg}");
        if self.issuer.is_empty() {
            return Err(at("issuer", "must not be empty".into()));
        }
        if self.audience.is_empty() || self.audience.iter().any(String::is_empty) {
            return Err(at(
                "audience",
                "expected at least one non-empty audience".into(),
            ));
        }
        let sources = [
            self.jwks_file.is_some(),
            self.jwks_url.is_some(),
            self.hmac_secret.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(format!(
                "{KEY_PATH}: expected exactly one of `jwks_file`, `jwks_url`, `hmac_secret`"
            ));
        }
        if let Some(url) = &self.jwks_url {
            parse_jwks_url(url).map_err(|e| at("jwks_url", e))?;
        }
        if let Some(secret) = &self.hmac_secret {
            if secret.0.len() < MIN_HMAC_SECRET_BYTES {
                return Err(at(
                    "hmac_secret",
                    format!("must be at least {MIN_HMAC_SECRET_BYTES} bytes"),
                ));
            }
        }
        if self.refresh_interval < Duration::from_secs(1) {
            return Err(at("refresh_interval", "must be at least 1s".into()));
        }
        if self.leeway > Duration::from_secs(300) {
            return Err(at("leeway", "must be at most 5m".into()));
        }
        for (key, value) in [
            ("subject_claim", &self.subject_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if value.is_empty() {
                return Err(at(key, "must not be empty".into()));
            }
        }
        let hmac = self.hmac_secret.is_some();
        let names: Vec<String> = match &self.algorithms {
            Some(names) => names.clone(),
            None if hmac => vec!["HS256".into()],
            None => vec!["RS256".into(), "ES256".into()],
        };
        if names.is_empty() {
            return Err(at("algorithms", "must list at least one algorithm".into()));
        }
        let mut algs = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let alg = Algorithm::from_str(name).map_err(|_| {
                at(
                    &format!("algorithms[{i}]"),
                    format!(
                        "unknown algorithm `{name}` (expected one of RS256, RS384, RS512, \
                         PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512)"
                    ),
                )
            })?;
            let is_hmac = alg.family() == AlgorithmFamily::Hmac;
            if is_hmac && !hmac {
                return Err(at(
                    &format!("algorithms[{i}]"),
                    format!("`{name}` needs `hmac_secret`; JWKS keys are used for signatures only"),
                ));
            }
            if !is_hmac && hmac {
                return Err(at(
                    &format!("algorithms[{i}]"),
                    format!("`{name}` needs `jwks_file` or `jwks_url`, not `hmac_secret`"),
                ));
            }
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        Ok(algs)
    }
}

fn parse_jwks_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("expected an http:// or https:// URL".into());
    }
    Ok(parsed)
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The `subject_claim` value.
    pub subject: String,
    /// The `groups_claim` values, in token order; empty when absent.
    pub groups: Vec<String>,
}

/// Why a token was refused. Every variant is a 401; [`JwtError::message`] is
/// safe to send to the client (it names the check, never a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts with JSON header and claims, or a claim of
    /// the wrong type.
    Malformed,
    /// `alg` is `none`, unknown, not in `algorithms`, or not the algorithm
    /// of the key named by `kid`.
    AlgorithmNotAllowed,
    /// No loaded key has the token's `kid` (or, without a `kid`, fits `alg`).
    UnknownKid,
    /// No keys are loaded: the JWKS URL has not been fetched successfully yet.
    NoKeys,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    NotYetValid,
    /// No `exp` claim, or one that is not a number.
    MissingExpiry,
    /// `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// `aud` is missing or names none of the configured audiences.
    WrongAudience,
    /// The subject claim is missing, empty or not a string.
    MissingSubject,
}

impl JwtError {
    /// Client-facing reason, for the error body.
    pub fn message(self) -> &'static str {
        match self {
            JwtError::Malformed => "Invalid token: not a well-formed JWT.",
            JwtError::AlgorithmNotAllowed => {
                "Invalid token: its signing algorithm is not accepted."
            }
            JwtError::UnknownKid => "Invalid token: its signing key (kid) is not known.",
            JwtError::NoKeys => "Token signing keys are not available yet; try again shortly.",
            JwtError::BadSignature => "Invalid token: bad signature.",
            JwtError::Expired => "Invalid token: expired.",
            JwtError::NotYetValid => "Invalid token: not valid yet (nbf).",
            JwtError::MissingExpiry => "Invalid token: no valid expiry (exp) claim.",
            JwtError::WrongIssuer => "Invalid token: issuer (iss) not accepted.",
            JwtError::WrongAudience => "Invalid token: audience (aud) not accepted.",
            JwtError::MissingSubject => "Invalid token: no subject claim.",
        }
    }

    /// Stable machine-readable reason, for the error body's `code`.
    pub fn code(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed_token",
            JwtError::AlgorithmNotAllowed => "algorithm_not_allowed",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::NoKeys => "keys_unavailable",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "token_expired",
            JwtError::NotYetValid => "token_not_yet_valid",
            JwtError::MissingExpiry => "missing_exp",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingSubject => "missing_subject",
        }
    }

    fn from_jwt(e: &jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature => JwtError::BadSignature,
            ErrorKind::ExpiredSignature => JwtError::Expired,
            ErrorKind::ImmatureSignature => JwtError::NotYetValid,
            ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
            ErrorKind::InvalidAudience => JwtError::WrongAudience,
            ErrorKind::InvalidAlgorithm => JwtError::AlgorithmNotAllowed,
            ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
                "exp" => JwtError::MissingExpiry,
                "iss" => JwtError::WrongIssuer,
                "aud" => JwtError::WrongAudience,
                _ => JwtError::Malformed,
            },
            _ => JwtError::Malformed,
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for JwtError {}

/// One verification key and the algorithms it may verify.
struct VerifyKey {
    kid: Option<String>,
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

impl VerifyKey {
    /// A key without a `kid` answers to any token; one with a `kid` only to
    /// tokens naming it or naming none.
    fn answers_to(&self, kid: Option<&str>) -> bool {
        match (kid, &self.kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
    }
}

#[derive(Default)]
struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
            .collect()
    }
}

/// Verifies bearer JWTs against the configured keys. Share it as an `Arc`;
/// run [`JwtVerifier::refresh_loop`] once in the background.
pub struct JwtVerifier {
    keys: ArcSwap<KeySet>,
    source: KeySource,
    allowed: Vec<Algorithm>,
    /// One prepared `Validation` per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    provider: &'static CryptoProvider,
    subject_claim: String,
    groups_claim: String,
    refresh_interval: Duration,
    /// Wakes the refresh task early (unknown `kid`, no keys yet).
    early_refresh: Notify,
    /// When the last refresh started or was requested, in ms since
    /// `started` plus the early-refresh gap (so 0 means "long ago").
    last_attempt_ms: AtomicU64,
    started: Instant,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            KeySource::File(p) => format!("file {}", p.display()),
            KeySource::Url { shown, .. } => format!("url {shown}"),
            KeySource::Secret => "hmac_secret <redacted>".into(),
        };
        f.debug_struct("JwtVerifier")
            .field("source", &source)
            .field("kids", &self.keys.load().kids())
            .field("algorithms", &self.allowed)
            .finish()
    }
}

impl JwtVerifier {
    /// Builds the verifier. Reads `jwks_file` now (an unreadable or unusable
    /// file is an error); a `jwks_url` is not fetched here, the refresh loop
    /// does it.
    pub fn new(cfg: &JwtConfig) -> Result<Arc<Self>, String> {
        let allowed = cfg.algorithms()?;
        let provider = CryptoProvider::try_get_default().ok_or_else(|| {
            "jsonwebtoken has no crypto provider (enable exactly one of its \
             `rust_crypto`/`aws_lc_rs` features)"
                .to_string()
        })?;
        let validations = allowed
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = cfg.leeway.as_secs();
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[&cfg.issuer]);
                v.set_audience(&cfg.audience);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        let (source, keys) = if let Some(path) = &cfg.jwks_file {
            let bytes = read_capped_file(path).map_err(|e| {
                format!(
                    "{KEY_PATH}.jwks_file: cannot read `{}`: {e}",
                    path.display()
                )
            })?;
            let keys = parse_jwks(&bytes, &allowed, provider)
                .map_err(|e| format!("{KEY_PATH}.jwks_file: `{}`: {e}", path.display()))?;
            (KeySource::File(path.clone()), keys)
        } else if let Some(url) = &cfg.jwks_url {
            let url = parse_jwks_url(url).map_err(|e| format!("{KEY_PATH}.jwks_url: {e}"))?;
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            shown.set_query(None);
            let client = reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .user_agent(concat!("modelgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("{KEY_PATH}.jwks_url: cannot build an HTTP client: {e}"))?;
            let source = KeySource::Url {
                url,
                shown: shown.to_string(),
                client,
            };
            (source, KeySet::default())
        } else if let Some(secret) = &cfg.hmac_secret {
            let key = DecodingKey::from_secret(secret.0.as_bytes())
                .map_err(|_| format!("{KEY_PATH}.hmac_secret: not a usable HMAC key"))?;
            let algs = allowed.clone();
            let set = KeySet {
                keys: vec![VerifyKey {
                    kid: None,
                    algs,
                    key,
                }],
            };
            (KeySource::Secret, set)
        } else {
            unreachable!("validated: exactly one key source");
        };
        Ok(Arc::new(JwtVerifier {
            keys: ArcSwap::from_pointee(keys),
            source,
            allowed,
            validations,
            provider,
            subject_claim: cfg.subject_claim.clone(),
            groups_claim: cfg.groups_claim.clone(),
            refresh_interval: cfg.refresh_interval,
            early_refresh: Notify::new(),
            last_attempt_ms: AtomicU64::new(0),
            started: Instant::now(),
        }))
    }

    /// Number of keys loaded now.
    pub fn key_count(&self) -> usize {
        self.keys.load().keys.len()
    }

    /// Verifies `token` (the bearer value, without `Bearer `): structure,
    /// algorithm, key, signature, then `exp`, `nbf`, `iss`, `aud`, subject.
    pub fn verify(&self, token: &str) -> Result<JwtIdentity, JwtError> {
        let header = decode_header(token).ok_or(JwtError::Malformed)?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| JwtError::AlgorithmNotAllowed)?;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(JwtError::AlgorithmNotAllowed)?;
        let keys = self.keys.load();
        if keys.keys.is_empty() {
            self.request_early_refresh();
            return Err(JwtError::NoKeys);
        }
        let kid = header.kid.as_deref();
        let mut named = false;
        let mut last_err = None;
        for key in keys.keys.iter().filter(|k| k.answers_to(kid)) {
            named = true;
            if !key.algs.contains(&alg) {
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return self.identity(&data.claims),
                // Another key with the same (or no) kid may still verify it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    last_err = Some(JwtError::BadSignature)
                }
                // The signature verified (or the token is unreadable): the
                // answer does not depend on the key.
                Err(e) => return Err(JwtError::from_jwt(&e)),
            }
        }
        match last_err {
            Some(e) => Err(e),
            // A key with this kid exists but is for another algorithm.
            None if named && kid.is_some() => Err(JwtError::AlgorithmNotAllowed),
            None => {
                self.request_early_refresh();
                Err(JwtError::UnknownKid)
            }
        }
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<JwtIdentity, JwtError> {
        let subject = match claim(claims, &self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(JwtError::MissingSubject),
        };
        let groups = match claim(claims, &self.groups_claim) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(JwtIdentity { subject, groups })
    }

    /// Wakes the refresh task, at most once per [`EARLY_REFRESH_MIN_GAP`].
    fn request_early_refresh(&self) {
        if matches!(self.source, KeySource::Secret) {
            return;
        }
        let now = self.now_ms();
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= EARLY_REFRESH_MIN_GAP.as_millis() as u64
            && self
                .last_attempt_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.early_refresh.notify_one();
        }
    }

    fn now_ms(&self) -> u64 {
        (self.started.elapsed() + EARLY_REFRESH_MIN_GAP).as_millis() as u64
    }

    /// Re-reads the JWKS file or fetches the JWKS URL now and, if the result
    /// is a valid JWKS with at least one usable key, swaps it in. On any
    /// failure the current keys stay. Returns the number of keys loaded.
    pub async fn refresh_now(&self) -> Result<usize, String> {
        self.last_attempt_ms.store(self.now_ms(), Ordering::Relaxed);
        let (bytes, what) = match &self.source {
            KeySource::Secret => return Ok(self.key_count()),
            KeySource::File(path) => {
                let p = path.clone();
                let read = tokio::task::spawn_blocking(move || read_capped_file(&p))
                    .await
                    .map_err(|e| format!("reading the JWKS file failed: {e}"))?;
                let what = format!("jwks_file `{}`", path.display());
                (read.map_err(|e| format!("{what}: {e}"))?, what)
            }
            KeySource::Url { url, shown, client } => {
                let what = format!("jwks_url `{shown}`");
                let bytes = fetch(client, url)
                    .await
                    .map_err(|e| format!("{what}: {e}"))?;
                (bytes, what)
            }
        };
        let set =
            parse_jwks(&bytes, &self.allowed, self.provider).map_err(|e| format!("{what}: {e}"))?;
        let count = set.keys.len();
        let old = self.keys.load();
        if old.kids() != set.kids() {
            log::info!(
                "JWT keys from {what}: {} (was {})",
                set.kids().join(", "),
                if old.keys.is_empty() {
                    "none".to_string()
                } else {
                    old.kids().join(", ")
                }
            );
        }
        self.keys.store(Arc::new(set));
        Ok(count)
    }

    /// Keeps the keys fresh: for a `jwks_url`, fetches at once and then every
    /// `refresh_interval`; for a `jwks_file`, re-reads it every
    /// `refresh_interval`. An unknown `kid` wakes it early (rate-limited).
    /// A failure logs a warning, keeps the last good keys and is retried
    /// within 30s. Returns at once for `hmac_secret`; otherwise never.
    pub async fn refresh_loop(self: Arc<Self>) {
        let mut due_now = match self.source {
            KeySource::Secret => return,
            KeySource::File(_) => false,
            KeySource::Url { .. } => true,
        };
        let mut wait = self.refresh_interval;
        loop {
            if !due_now {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.early_refresh.notified() => {}
                }
            }
            due_now = false;
            match self.refresh_now().await {
                Ok(n) => {
                    log::debug!("JWT keys refreshed: {n} key(s)");
                    wait = self.refresh_interval;
                }
                Err(e) => {
                    log::warn!(
                        "JWT key refresh failed, keeping the {} key(s) loaded: {e}",
                        self.key_count()
                    );
                    wait = self.refresh_interval.min(RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}

/// The parts of a JOSE header we read ourselves, so that `alg: none` and
/// unknown algorithms are reported as such rather than as malformed.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn decode_header(token: &str) -> Option<RawHeader> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // The signature may be empty (`alg: none`), so that such tokens are
    // refused as JWTs with the right reason rather than as unknown API keys.
    if header.is_empty()
        || payload.is_empty()
        || ![header, payload, signature].into_iter().all(b64url)
    {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Whether a bearer value is shaped like a JWT (three base64url parts whose
/// first decodes to a JSON header with an `alg`), to tell it from an API
/// key. Says nothing about validity.
///
/// ```
/// use modelgate::identity::jwt::looks_like_jwt;
/// assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.e30."));
/// assert!(!looks_like_jwt("sk-live-abc123"));
/// ```
pub fn looks_like_jwt(token: &str) -> bool {
    decode_header(token).is_some()
}

/// `name` as a top-level claim, else as a dotted path into nested objects.
fn claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_object()?.get(part)?;
    }
    Some(cur)
}

fn read_capped_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    Ok(bytes)
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, String> {
    // Errors name the failure kind, not the URL (the caller names it, without
    // any credentials it may carry).
    let brief = |e: reqwest::Error| {
        if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "cannot connect".to_string()
        } else {
            e.without_url().to_string()
        }
    };
    let mut resp = client.get(url.clone()).send().await.map_err(brief)?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!("body larger than {MAX_JWKS_BYTES} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(brief)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("body larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a JWKS document into the keys usable with `allowed`. Keys that
/// are for encryption, symmetric (`oct`: a published HMAC key would let
/// anyone sign), of an unsupported type or curve, or for no allowed
/// algorithm are skipped; none usable at all is an error.
fn parse_jwks(
    bytes: &[u8],
    allowed: &[Algorithm],
    provider: &CryptoProvider,
) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS document (expected {{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        match usable_key(raw, allowed, provider) {
            Ok(k) => keys.push(k),
            Err(why) => skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(if skipped.is_empty() {
            "the JWKS has no keys".to_string()
        } else {
            format!("no usable signing key ({})", skipped.join("; "))
        });
    }
    if !skipped.is_empty() {
        log::debug!("JWKS keys skipped: {}", skipped.join("; "));
    }
    Ok(KeySet { keys })
}

fn usable_key(
    raw: Value,
    allowed: &[Algorithm],
    provider: &CryptoProvider,
) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|_| "not a valid JWK".to_string())?;
    let kid = jwk.common.key_id.clone();
    let name = kid.as_deref().unwrap_or("(no kid)");
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(format!("`{name}` is an encryption key"));
    }
    let fits: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err(format!("`{name}` has an unsupported curve")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "`{name}` is a symmetric key; use `hmac_secret` for HMAC"
            ))
        }
        _ => return Err(format!("`{name}` has an unsupported key type")),
    };
    let mut algs: Vec<Algorithm> = fits
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect();
    if let Some(declared) = jwk.common.key_algorithm {
        let declared = Algorithm::try_from(declared)
            .map_err(|_| format!("`{name}` declares an unsupported alg"))?;
        algs.retain(|a| *a == declared);
    }
    if algs.is_empty() {
        return Err(format!("`{name}` is for no algorithm in `algorithms`"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| format!("`{name}` is not a valid key"))?;
    // Build a verifier once so that a broken key is refused now, not per token.
    (provider.verifier_factory)(&algs[0], &key)
        .map_err(|_| format!("`{name}` is not a valid key"))?;
    Ok(VerifyKey { kid, algs, key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const RSA_A: &str = include_str!("../../tests/data/jwt/rsa_a.pem");
    const RSA_A_PUB: &str = include_str!("../../tests/data/jwt/rsa_a.pub.pem");
    const RSA_B: &str = include_str!("../../tests/data/jwt/rsa_b.pem");
    const EC: &str = include_str!("../../tests/data/jwt/ec_p256.pem");
    const JWKS_A: &str = include_str!("../../tests/data/jwt/jwks_a.json");
    const JWKS_B: &str = include_str!("../../tests/data/jwt/jwks_b.json");
    const ISS: &str = "https://idp.test";
    const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!";

    fn rsa_a() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_A.as_bytes()).unwrap()
    }
    fn rsa_b() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_B.as_bytes()).unwrap()
    }
    fn ec() -> EncodingKey {
        EncodingKey::from_ec_pem(EC.as_bytes()).unwrap()
    }

    fn config(extra: &str) -> JwtConfig {
        let aud = if extra.contains("audience:") {
            ""
        } else {
            "audience: modelgate\n"
        };
        let yaml = format!("issuer: {ISS}\n{aud}{extra}");
        serde_yaml::from_str(&yaml).unwrap()
    }

    /// A config reading `jwks` from a temporary file (kept alive by the guard).
    fn file_verifier(jwks: &str, extra: &str) -> (Arc<JwtVerifier>, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), jwks).unwrap();
        let cfg = config(&format!("jwks_file: {}\n{extra}", file.path().display()));
        (JwtVerifier::new(&cfg).unwrap(), file)
    }

    fn verifier_a() -> (Arc<JwtVerifier>, tempfile::NamedTempFile) {
        file_verifier(JWKS_A, "")
    }

    fn claims() -> Value {
        json!({
            "iss": ISS,
            "aud": "modelgate",
            "sub": "alice",
            "exp": get_current_timestamp() + 600,
            "groups": ["analysts", "admins"],
        })
    }

    fn with(mut base: Value, patch: Value) -> Value {
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(&h, claims, key).unwrap()
    }

    fn rs(kid: &str, claims: &Value) -> String {
        token(Algorithm::RS256, Some(kid), &rsa_a(), claims)
    }

    fn b64(v: &Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn fixture_jwks_match_the_private_keys() {
        let jwk = |k: &EncodingKey, alg| {
            serde_json::to_value(Jwk::from_encoding_key(k, alg).unwrap()).unwrap()
        };
        let a: Value = serde_json::from_str(JWKS_A).unwrap();
        let b: Value = serde_json::from_str(JWKS_B).unwrap();
        let rsa = jwk(&rsa_a(), Algorithm::RS256);
        let ecj = jwk(&ec(), Algorithm::ES256);
        assert_eq!(a["keys"][0]["n"], rsa["n"]);
        assert_eq!(a["keys"][0]["kid"], "rsa-a");
        assert_eq!(a["keys"][1]["x"], ecj["x"]);
        assert_eq!(a["keys"][1]["y"], ecj["y"]);
        assert_eq!(b["keys"][0]["n"], jwk(&rsa_b(), Algorithm::RS256)["n"]);
        assert_eq!(b["keys"][0]["kid"], "rsa-b");
    }

    #[test]
    fn accepts_valid_rs256_and_es256() {
        let (v, _f) = verifier_a();
        assert_eq!(v.key_count(), 2);
        let id = v.verify(&rs("rsa-a", &claims())).unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.groups, vec!["analysts", "admins"]);
        let t = token(Algorithm::ES256, Some("ec-a"), &ec(), &claims());
        assert_eq!(v.verify(&t).unwrap().subject, "alice");
        // No kid: the key that fits the algorithm is tried.
        let t = token(Algorithm::RS256, None, &rsa_a(), &claims());
        assert_eq!(v.verify(&t).unwrap().subject, "alice");
    }

    #[test]
    fn accepts_valid_hs256_with_secret() {
        let cfg = config(&format!("hmac_secret: \"{SECRET}\""));
        let v = JwtVerifier::new(&cfg).unwrap();
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let t = token(Algorithm::HS256, None, &key, &claims());
        assert_eq!(v.verify(&t).unwrap().subject, "alice");
        let wrong = EncodingKey::from_secret(b"another-secret-that-is-long-enough!!").unwrap();
        let t = token(Algorithm::HS256, Some("any"), &wrong, &claims());
        assert_eq!(v.verify(&t), Err(JwtError::BadSignature));
        // RS256 is not configured with a secret.
        assert_eq!(
            v.verify(&rs("rsa-a", &claims())),
            Err(JwtError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn rejects_bad_signature() {
        let (v, _f) = verifier_a();
        // Signed by key B but claiming key A's kid.
        let t = token(Algorithm::RS256, Some("rsa-a"), &rsa_b(), &claims());
        assert_eq!(v.verify(&t), Err(JwtError::BadSignature));
        // Claims altered after signing.
        let good = rs("rsa-a", &claims());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = with(claims(), json!({"sub": "mallory"}));
        let t = format!("{}.{}.{}", parts[0], b64(&forged), parts[2]);
        assert_eq!(v.verify(&t), Err(JwtError::BadSignature));
    }

    #[test]
    fn expiry_with_leeway() {
        let (v, _f) = verifier_a();
        let now = get_current_timestamp();
        let t = rs("rsa-a", &with(claims(), json!({"exp": now - 10})));
        assert!(
            v.verify(&t).is_ok(),
            "10s past exp is within the 30s leeway"
        );
        let t = rs("rsa-a", &with(claims(), json!({"exp": now - 60})));
        assert_eq!(v.verify(&t), Err(JwtError::Expired));
        let t = rs("rsa-a", &with(claims(), json!({"exp": null})));
        assert_eq!(v.verify(&t), Err(JwtError::MissingExpiry));
        let t = rs("rsa-a", &with(claims(), json!({"exp": "soon"})));
        assert_eq!(v.verify(&t), Err(JwtError::MissingExpiry));
    }

    #[test]
    fn not_before_in_future() {
        let (v, _f) = verifier_a();
        let now = get_current_timestamp();
        let t = rs("rsa-a", &with(claims(), json!({"nbf": now + 120})));
        assert_eq!(v.verify(&t), Err(JwtError::NotYetValid));
        let t = rs("rsa-a", &with(claims(), json!({"nbf": now + 10})));
        assert!(v.verify(&t).is_ok(), "within leeway");
    }

    #[test]
    fn issuer_and_audience() {
        let (v, _f) = verifier_a();
        let t = rs(
            "rsa-a",
            &with(claims(), json!({"iss": "https://evil.test"})),
        );
        assert_eq!(v.verify(&t), Err(JwtError::WrongIssuer));
        let t = rs("rsa-a", &with(claims(), json!({"iss": null})));
        assert_eq!(v.verify(&t), Err(JwtError::WrongIssuer));
        let t = rs("rsa-a", &with(claims(), json!({"aud": "other"})));
        assert_eq!(v.verify(&t), Err(JwtError::WrongAudience));
        let t = rs("rsa-a", &with(claims(), json!({"aud": null})));
        assert_eq!(v.verify(&t), Err(JwtError::WrongAudience));
        let t = rs(
            "rsa-a",
            &with(claims(), json!({"aud": ["other", "modelgate"]})),
        );
        assert!(v.verify(&t).is_ok());
        // Any configured audience will do.
        let (v, _f) = file_verifier(JWKS_A, "audience: [x, other]");
        let t = rs("rsa-a", &with(claims(), json!({"aud": "other"})));
        assert!(v.verify(&t).is_ok());
    }

    #[test]
    fn unknown_kid() {
        let (v, _f) = verifier_a();
        let t = token(Algorithm::RS256, Some("rsa-b"), &rsa_b(), &claims());
        assert_eq!(v.verify(&t), Err(JwtError::UnknownKid));
    }

    #[test]
    fn rejects_alg_none_and_unlisted_algorithms() {
        let (v, _f) = verifier_a();
        for alg in ["none", "None", "HS999"] {
            let t = format!(
                "{}.{}.",
                b64(&json!({"alg": alg, "kid": "rsa-a"})),
                b64(&claims())
            );
            assert_eq!(v.verify(&t), Err(JwtError::AlgorithmNotAllowed), "{alg}");
        }
        // ES256 allowed by default; a config listing RS256 only refuses it.
        let (v, _f) = file_verifier(JWKS_A, "algorithms: [RS256]");
        assert_eq!(v.key_count(), 1, "the EC key fits no allowed algorithm");
        let t = token(Algorithm::ES256, Some("ec-a"), &ec(), &claims());
        assert_eq!(v.verify(&t), Err(JwtError::AlgorithmNotAllowed));
        // RS384 with an RSA key, but not listed.
        let t = token(Algorithm::RS384, Some("rsa-a"), &rsa_a(), &claims());
        assert_eq!(v.verify(&t), Err(JwtError::AlgorithmNotAllowed));
    }

    #[test]
    fn key_type_must_match_algorithm() {
        // The classic confusion: HS256 "signed" with the RSA public key.
        let (v, _f) = verifier_a();
        let key = EncodingKey::from_secret(RSA_A_PUB.as_bytes()).unwrap();
        let t = token(Algorithm::HS256, Some("rsa-a"), &key, &claims());
        assert_eq!(v.verify(&t), Err(JwtError::AlgorithmNotAllowed));
        // Even where RS256 and ES256 are both allowed, ES256 cannot use the RSA key.
        let t = token(Algorithm::ES256, Some("rsa-a"), &ec(), &claims());
        assert_eq!(v.verify(&t), Err(JwtError::AlgorithmNotAllowed));
        // A JWK that declares `alg` is used for that algorithm only.
        let mut doc: Value = serde_json::from_str(JWKS_A).unwrap();
        doc["keys"][0]["alg"] = json!("PS256");
        let (v, _f) = file_verifier(&doc.to_string(), "algorithms: [RS256, PS256]");
        let t = rs("rsa-a", &claims());
        assert_eq!(v.verify(&t), Err(JwtError::AlgorithmNotAllowed));
    }

    #[test]
    fn symmetric_keys_in_a_jwks_are_ignored() {
        let oct = json!({"keys": [{"kty": "oct", "kid": "s", "k": b64(&json!(SECRET))}]});
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), oct.to_string()).unwrap();
        let cfg = config(&format!("jwks_file: {}", file.path().display()));
        let err = JwtVerifier::new(&cfg).unwrap_err();
        assert!(err.contains("symmetric"), "{err}");
    }

    #[test]
    fn malformed_tokens() {
        let (v, _f) = verifier_a();
        for t in ["", "abc", "a.b", "a.b.c.d", "!!.e30.x", "e30.e30.sig"] {
            assert_eq!(v.verify(t), Err(JwtError::Malformed), "{t:?}");
        }
        // Claims not JSON.
        let t = format!(
            "{}.bm90IGpzb24.c2ln",
            b64(&json!({"alg": "RS256", "kid": "rsa-a"}))
        );
        assert_eq!(v.verify(&t), Err(JwtError::BadSignature));
    }

    #[test]
    fn subject_claim() {
        let (v, _f) = verifier_a();
        let t = rs("rsa-a", &with(claims(), json!({"sub": null})));
        assert_eq!(v.verify(&t), Err(JwtError::MissingSubject));
        let t = rs("rsa-a", &with(claims(), json!({"sub": ""})));
        assert_eq!(v.verify(&t), Err(JwtError::MissingSubject));
        let (v, _f) = file_verifier(JWKS_A, "subject_claim: email");
        let t = rs("rsa-a", &with(claims(), json!({"email": "a@x.test"})));
        assert_eq!(v.verify(&t).unwrap().subject, "a@x.test");
    }

    #[test]
    fn groups_claim_shapes() {
        let (v, _f) = verifier_a();
        let groups = |c: Value| v.verify(&rs("rsa-a", &with(claims(), c))).unwrap().groups;
        assert_eq!(groups(json!({"groups": "a  b\tc"})), vec!["a", "b", "c"]);
        assert_eq!(groups(json!({"groups": "a,b, c"})), vec!["a", "b", "c"]);
        assert_eq!(groups(json!({"groups": ["a", 7, "", "b"]})), vec!["a", "b"]);
        assert!(groups(json!({"groups": null})).is_empty());
        assert!(groups(json!({"groups": {"x": 1}})).is_empty());

        let (v, _f) = file_verifier(JWKS_A, "groups_claim: realm_access.roles");
        let c = with(claims(), json!({"realm_access": {"roles": ["ops", "dev"]}}));
        assert_eq!(
            v.verify(&rs("rsa-a", &c)).unwrap().groups,
            vec!["ops", "dev"]
        );
        let c = with(claims(), json!({"realm_access": "flat"}));
        assert!(v.verify(&rs("rsa-a", &c)).unwrap().groups.is_empty());

        // A top-level claim whose name has dots wins over the path reading.
        let (v, _f) = file_verifier(JWKS_A, "groups_claim: https://mg.test/groups");
        let c = with(claims(), json!({"https://mg.test/groups": "x y"}));
        assert_eq!(v.verify(&rs("rsa-a", &c)).unwrap().groups, vec!["x", "y"]);
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = config("jwks_url: https://idp.test/certs");
        assert_eq!(c.refresh_interval, Duration::from_secs(300));
        assert_eq!(c.leeway, Duration::from_secs(30));
        assert_eq!(c.subject_claim, "sub");
        assert_eq!(c.groups_claim, "groups");
        assert_eq!(c.audience, vec!["modelgate"]);
        assert_eq!(
            c.algorithms().unwrap(),
            vec![Algorithm::RS256, Algorithm::ES256]
        );
        let c = config(&format!("hmac_secret: \"{SECRET}\""));
        assert_eq!(c.algorithms().unwrap(), vec![Algorithm::HS256]);
        assert!(!format!("{c:?}").contains(SECRET));
        let c = config("jwks_url: https://idp.test/certs\naudience: [a, b]\nleeway: 5s");
        assert_eq!(c.audience, vec!["a", "b"]);

        let unknown = format!("issuer: {ISS}\naudience: a\njwks_url: http://x\nbogus: 1");
        assert!(serde_yaml::from_str::<JwtConfig>(&unknown).is_err());

        let err = |extra: &str| config(extra).validate().unwrap_err();
        assert!(err("").contains("exactly one"));
        let both = format!("jwks_url: http://x\nhmac_secret: \"{SECRET}\"");
        assert!(err(&both).contains("exactly one"));
        assert!(err("jwks_url: ftp://x/y").starts_with("identity.jwt.jwks_url:"));
        assert!(err("jwks_url: http://x\nalgorithms: [none]").contains("algorithms[0]"));
        assert!(err("jwks_url: http://x\nalgorithms: [RS256, HS256]").contains("algorithms[1]"));
        let rs_with_secret = format!("hmac_secret: \"{SECRET}\"\nalgorithms: [RS256]");
        assert!(err(&rs_with_secret).contains("algorithms[0]"));
        assert!(err("hmac_secret: short").contains("hmac_secret"));
        assert!(err("jwks_url: http://x\nleeway: 1h").contains("leeway"));
        assert!(err("jwks_url: http://x\nalgorithms: []").contains("algorithms"));
        let missing = JwtVerifier::new(&config("jwks_file: /nonexistent/jwks.json")).unwrap_err();
        assert!(missing.starts_with("identity.jwt.jwks_file:"), "{missing}");
    }

    #[test]
    fn detects_jwt_shape() {
        assert!(looks_like_jwt(&rs("rsa-a", &claims())));
        assert!(looks_like_jwt(&format!(
            "{}.e30.",
            b64(&json!({"alg": "none"}))
        )));
        for t in [
            "sk-live-abc123",
            "",
            "a.b.c",
            "e30.e30.e30",
            "x.y",
            "mg_123.456.789",
        ] {
            assert!(!looks_like_jwt(t), "{t}");
        }
    }

    #[test]
    fn jwt_error_messages_are_fixed_strings() {
        for e in [
            JwtError::BadSignature,
            JwtError::UnknownKid,
            JwtError::Expired,
        ] {
            assert!(e.message().starts_with("Invalid token"));
            assert!(!e.code().is_empty());
        }
    }

    /// A one-route HTTP server whose answer the test changes; counts requests.
    struct JwksServer {
        url: String,
        reply: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
    }

    impl JwksServer {
        async fn start(status: u16, body: &str) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/certs", listener.local_addr().unwrap());
            let reply = Arc::new(Mutex::new((status, body.to_string())));
            let hits = Arc::new(AtomicUsize::new(0));
            let (r, h) = (reply.clone(), hits.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = r.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            JwksServer { url, reply, hits }
        }

        fn set(&self, status: u16, body: &str) {
            *self.reply.lock().unwrap() = (status, body.to_string());
        }
    }

    fn url_verifier(url: &str, extra: &str) -> Arc<JwtVerifier> {
        JwtVerifier::new(&config(&format!("jwks_url: {url}\n{extra}"))).unwrap()
    }

    #[tokio::test]
    async fn jwks_url_rotation() {
        let server = JwksServer::start(200, JWKS_A).await;
        let v = url_verifier(&server.url, "");
        let token_a = rs("rsa-a", &claims());
        let token_b = token(Algorithm::RS256, Some("rsa-b"), &rsa_b(), &claims());
        // No fetch in `new`.
        assert_eq!(server.hits.load(Ordering::SeqCst), 0);
        assert_eq!(v.verify(&token_a), Err(JwtError::NoKeys));

        assert_eq!(v.refresh_now().await, Ok(2));
        assert!(v.verify(&token_a).is_ok());
        assert_eq!(v.verify(&token_b), Err(JwtError::UnknownKid));

        server.set(200, JWKS_B);
        assert_eq!(v.refresh_now().await, Ok(1));
        assert_eq!(v.verify(&token_a), Err(JwtError::UnknownKid));
        assert!(v.verify(&token_b).is_ok());
    }

    #[tokio::test]
    async fn failed_fetch_keeps_last_good_keys() {
        let server = JwksServer::start(200, JWKS_A).await;
        let v = url_verifier(&server.url, "");
        v.refresh_now().await.unwrap();
        let token_a = rs("rsa-a", &claims());
        for (status, body, want) in [
            (500, "oops", "HTTP 500"),
            (200, "<html>garbage</html>", "not a JWKS"),
            (200, r#"{"keys": []}"#, "no keys"),
            (200, r#"{"keys": [{"kty": "RSA"}]}"#, "no usable"),
        ] {
            server.set(status, body);
            let err = v.refresh_now().await.unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(err.contains(&server.url), "{err}");
            assert_eq!(v.key_count(), 2);
            assert!(v.verify(&token_a).is_ok());
        }
        // Too large.
        server.set(
            200,
            &format!(
                "{{\"keys\": [], \"pad\": \"{}\"}}",
                "x".repeat(MAX_JWKS_BYTES)
            ),
        );
        assert!(v.refresh_now().await.unwrap_err().contains("larger"));
        // Nobody listening.
        let dead = url_verifier("http://127.0.0.1:9/certs", "");
        assert!(dead.refresh_now().await.is_err());
        assert_eq!(dead.verify(&token_a), Err(JwtError::NoKeys));
    }

    #[tokio::test]
    async fn jwks_file_rotation_by_replacing_the_file() {
        let (v, file) = verifier_a();
        let token_a = rs("rsa-a", &claims());
        let token_b = token(Algorithm::RS256, Some("rsa-b"), &rsa_b(), &claims());
        std::fs::write(file.path(), JWKS_B).unwrap();
        assert_eq!(v.refresh_now().await, Ok(1));
        assert!(v.verify(&token_b).is_ok());
        assert_eq!(v.verify(&token_a), Err(JwtError::UnknownKid));
        std::fs::write(file.path(), "not json").unwrap();
        assert!(v.refresh_now().await.is_err());
        assert!(v.verify(&token_b).is_ok());
    }

    #[tokio::test]
    async fn refresh_loop_fetches_at_start_and_early_on_unknown_kid() {
        let server = JwksServer::start(200, JWKS_A).await;
        let v = url_verifier(&server.url, "refresh_interval: 1h");
        let task = tokio::spawn(v.clone().refresh_loop());
        let token_a = rs("rsa-a", &claims());
        let token_b = token(Algorithm::RS256, Some("rsa-b"), &rsa_b(), &claims());
        // Polls for up to 10 s; the machine may be busy.
        let eventually = |tok: String| {
            let v = v.clone();
            async move {
                for _ in 0..200 {
                    if v.verify(&tok).is_ok() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            }
        };
        // Wait for the keys without calling `verify`: its NoKeys answers
        // would nudge the loop into a second fetch (or not, by timing). So
        // the keys can only come from the fetch at start, and it is the only
        // one until something wakes the loop.
        for _ in 0..200 {
            if v.key_count() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(v.verify(&token_a).is_ok(), "first fetch at start");
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        // The start-up fetch counts as the last attempt, so an unknown kid
        // now is inside the 30s gap and must not cause a fetch. (A short
        // wait is enough to see that: a woken fetch starts as soon as this
        // test yields, and would usually also trip the steps below, as key
        // B already loaded or as an extra hit.)
        server.set(200, JWKS_B);
        assert_eq!(v.verify(&token_b), Err(JwtError::UnknownKid));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        // Pretend the last attempt was long ago: the next unknown kid wakes it.
        v.last_attempt_ms.store(0, Ordering::Relaxed);
        assert_eq!(v.verify(&token_b), Err(JwtError::UnknownKid));
        assert!(eventually(token_b).await, "early refresh picked up key B");
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        task.abort();
    }

    #[tokio::test]
    async fn refresh_loop_returns_for_a_secret() {
        let v = JwtVerifier::new(&config(&format!("hmac_secret: \"{SECRET}\""))).unwrap();
        tokio::time::timeout(Duration::from_secs(1), v.clone().refresh_loop())
            .await
            .expect("returns at once");
        assert_eq!(v.refresh_now().await, Ok(1));
    }
}
