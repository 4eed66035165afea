//! The typed configuration schema: every key modelgate accepts, with its
//! default documented beside it. Unknown keys are rejected everywhere
//! (`deny_unknown_fields`), except that `server:` is Pingora's own
//! `ServerConf`, checked against Pingora's key list in `config::load`.
//!
//! This module only describes shapes; cross-field checks (a route naming an
//! upstream that exists, ...) live in `config::validate`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The whole `modelgate.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pingora's server settings (`threads`, `pid_file`, `upgrade_sock`,
    /// `grace_period_seconds`, ...), passed through unchanged. Default: Pingora's
    /// defaults, except `threads` which defaults to the number of CPUs.
    #[serde(default)]
    pub server: serde_yaml::Mapping,
    /// Plain HTTP/1.1 addresses the proxy listens on, e.g. `["0.0.0.0:8080"]`.
    /// At least one of `listen` and `listeners` is required.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Named listeners: HTTPS (with `tls:`), or plain with optional h2c.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Process-wide TLS settings (certificate reload, expiry warnings).
    #[serde(default)]
    pub tls: TlsConfig,
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`). Optional: without
    /// it there is no admin port.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Request limits and client-side timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// How HTTP/1 messages are relayed.
    #[serde(default)]
    pub http: HttpConfig,
    /// Clients allowed to call the gateway.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// Named pools of model hosts. At least one.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, evaluated in order; the first match wins. At least one.
    pub routes: Vec<RouteConfig>,
    /// Named policies that routes refer to. `default: {}` is implied when absent.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Detector settings shared by all policies (custom entities, hash key, bounds).
    #[serde(default)]
    pub masking: MaskingConfig,
    /// The audit trail: one hash-chained record per call. Absent: no audit
    /// (the gateway warns at start-up).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// JWT identities (in addition to `clients` API keys).
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Requests per second and completion-token budgets per client and per
    /// group, shared through Redis when `redis` is set.
    #[serde(default)]
    pub rate_limits: Option<crate::policy::limits::RateLimitsConfig>,
    /// Human approval for `require_approval` rules: approver groups, the
    /// store (memory or Redis), time limits, webhook.
    #[serde(default)]
    pub approval: Option<crate::approval::ApprovalConfig>,
    /// Drift detection over the answers (needs `audit`).
    #[serde(default)]
    pub drift: Option<crate::drift::DriftConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where records go; several at once. At least one.
    pub sinks: Vec<SinkConfig>,
    /// Records waiting for the writer before new calls meet `on_full` (calls
    /// in flight still queue their final record). Default 8192.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// What a call meets when its record cannot be queued: `fail_closed`
    /// (default: 503), `block` (wait up to `block_timeout`, then 503) or
    /// `drop` (serve it anyway; counted in `modelgate_audit_dropped_total`).
    #[serde(default)]
    pub on_full: OnFull,
    /// Longest wait for queue space under `block`. Default `250ms`.
    #[serde(default = "default_block_timeout", with = "humantime_serde")]
    pub block_timeout: Duration,
    /// Under `fail_closed` and `block`, a sink failing this long makes new
    /// calls get 503 until it recovers. Default `5s`.
    #[serde(default = "default_fail_closed_after", with = "humantime_serde")]
    pub fail_closed_after: Duration,
    /// How bodies are stored: `masked` (default: every entity replaced by its
    /// label), `raw`, or `none` (no bodies, only metadata).
    #[serde(default)]
    pub bodies: BodyMode,
    /// Longest request body and response text stored per record, in bytes;
    /// longer ones are cut and marked `truncated`. Default 65536.
    #[serde(default = "default_audit_body_bytes")]
    pub max_body_bytes: usize,
    /// Keys the hash chain (HMAC-SHA256): without the key, nobody can rewrite
    /// the chain consistently. Default: unkeyed SHA-256.
    #[serde(default)]
    pub hmac_key: Option<Secret>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    #[default]
    FailClosed,
    Block,
    Drop,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    #[default]
    Masked,
    Raw,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON Lines files with rotation.
    File(FileSinkConfig),
    /// An Elasticsearch / OpenSearch `_bulk` endpoint.
    Elasticsearch(ElasticSinkConfig),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The current file, e.g. `/var/log/modelgate/audit.jsonl`. Rotated files
    /// sit beside it as `audit.<first seq>.jsonl`.
    pub path: String,
    /// Rotate once the file reaches this size. Default 100 MiB; 0: never.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotate a file this old (e.g. `1d`). Default: never by age.
    #[serde(default, with = "humantime_serde")]
    pub rotate_interval: Option<Duration>,
    /// Longest time written records may sit unsynced (`fsync`). Default
    /// `1s`; `0s`: fsync after every batch.
    #[serde(default = "default_fsync_interval", with = "humantime_serde")]
    pub fsync_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticSinkConfig {
    /// Base URL, `http://host:port` (the `_bulk` API is under it).
    pub url: String,
    /// Index the records go to. Default `modelgate-audit`.
    #[serde(default = "default_audit_index")]
    pub index: String,
    /// Sent as `Authorization: ApiKey <api_key>` when set.
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Records per `_bulk` request, at most. Default 500.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a record waits for its batch to fill. Default `1s`.
    #[serde(default = "default_flush_interval", with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Timeout of one `_bulk` request. Default `10s`.
    #[serde(default = "default_sink_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Records held while the collector is unreachable. Default 100000;
    /// beyond it the writer waits (and the queue fills), or under `drop`
    /// the record is dropped for this sink.
    #[serde(default = "default_max_buffer")]
    pub max_buffer: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    /// Key of the `hash` replacement style (keyed HMAC-SHA256). Required when
    /// any policy uses `hash`.
    pub hash_key: Option<Secret>,
    /// Most text one stream may hold back while a match may still be in
    /// progress. Default 16384 bytes (longer than any built-in entity).
    pub max_holdback_bytes: usize,
    /// Largest non-streaming JSON response buffered for masking; larger
    /// responses are cut off rather than sent unmasked. Default 16 MiB.
    pub max_json_body_bytes: usize,
    /// Extra entities: a name (`[A-Z][A-Z0-9_]*`) and a regex.
    pub custom: Vec<CustomEntity>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        MaskingConfig {
            hash_key: None,
            max_holdback_bytes: 16 * 1024,
            max_json_body_bytes: 16 * 1024 * 1024,
            custom: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomEntity {
    pub name: String,
    pub pattern: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener, e.g. `127.0.0.1:9090`.
    pub listen: String,
    /// Bearer token required for every admin endpoint except `/healthz` and
    /// `/readyz`. Without it those endpoints answer 403.
    #[serde(default)]
    pub token: Option<Secret>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Relay HTTP/1 header names as the client and the model spelled them
    /// (`X-Custom-Thing`). Default `false`: names are relayed as HTTP/2
    /// carries them, lower-case, except a dozen standard ones Pingora
    /// title-cases (`Content-Type`, `Host`, ...). Header names are
    /// case-insensitive (RFC 9110 section 5.1); keeping every name's spelling
    /// costs a second map per message (about a tenth of the passthrough
    /// proxy's instructions per call).
    pub preserve_header_case: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes; larger → 413. Default 10 MiB.
    pub max_request_body_bytes: usize,
    /// Time allowed to receive the whole request body. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub client_body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 10 * 1024 * 1024,
            client_body_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Client name, used in metrics labels and logs. Unique.
    pub name: String,
    /// Hex SHA-256 of the client's key (`modelgate hash-key` prints it). The key
    /// itself is never stored. A client has a key, a `cert`, or both.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// The client certificate that identifies this client on listeners with
    /// `tls.client_auth` (the certificate must verify against that CA).
    #[serde(default)]
    pub cert: Option<CertMatchConfig>,
    /// Groups the client belongs to (used by policies).
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` of each model server; hostnames are resolved at start-up
    /// (every address becomes a backend). Round-robin, health-checked.
    pub hosts: Vec<String>,
    /// Value sent upstream as the credential header, e.g. `Bearer ${VLLM_API_KEY}`.
    #[serde(default)]
    pub credential: Option<Secret>,
    /// File holding the credential header value (e.g. a mounted Kubernetes
    /// Secret), read at start-up and trimmed. Exclusive with `credential`.
    #[serde(default)]
    pub credential_file: Option<String>,
    /// Header that carries the credential. Default `authorization`.
    #[serde(default = "default_credential_header")]
    pub credential_header: String,
    /// `Host` header sent upstream. Default: the client's `Host`.
    #[serde(default)]
    pub host_header: Option<String>,
    /// Timeout to establish a TCP connection to a host. Default `2s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from the upstream. Long by default
    /// (`300s`) because models may think for a while between tokens.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest wait to write to the upstream. Default `30s`.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an idle keep-alive connection to a host is kept. Default `60s`.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Active health checking of every host.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// HTTPS to the hosts (present: TLS, verified). Absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

/// `upstreams.<pool>.tls`: how the gateway talks TLS to a pool's hosts.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// SNI and the name the host certificate must carry. Default: each
    /// host's own name from `hosts`; required when a host is an IP address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM bundle of the CAs to trust. Default: the system roots
    /// (`/etc/ssl/certs`, package `ca-certificates`).
    #[serde(default)]
    pub ca: Option<String>,
    /// Client certificate (PEM chain) for upstream mutual TLS, with `client_key`.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// Private key (PEM) of `client_cert`.
    #[serde(default)]
    pub client_key: Option<String>,
    /// Check that the certificate names `server_name`. Default true; false
    /// still checks the chain.
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
    /// One more name the certificate may carry instead of `server_name`.
    #[serde(default)]
    pub alternative_name: Option<String>,
    /// Accept any certificate (no chain, no name check). For tests only;
    /// the gateway warns at start-up. Default false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One entry of `listeners`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Label in metrics, logs and audit. Default `listeners[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// `IP:port` to listen on.
    pub address: String,
    /// HTTPS settings; absent: plain HTTP.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// Plain listeners only: also accept HTTP/2 with prior knowledge (h2c).
    /// Pingora sets this per proxy service, so it must be the same on every
    /// plain listener. Default false.
    #[serde(default)]
    pub h2c: bool,
}

impl ListenerConfig {
    /// `name`, else `listeners[<index>]`.
    pub fn name_or_default(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("listeners[{index}]"))
    }
}

/// `listeners[].tls`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificate/key pairs (PEM files). The client's SNI picks one by the
    /// names in its SAN DNS entries (else its CN; `*.x` wildcards work); the
    /// first is served when nothing matches. At least one.
    pub certificates: Vec<CertKeyFiles>,
    /// Lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// OpenSSL cipher string for TLS 1.2. Default: Mozilla intermediate
    /// (ECDHE with AES-GCM or ChaCha20-Poly1305).
    #[serde(default)]
    pub ciphers: Option<String>,
    /// Offer HTTP/2 through ALPN (`h2`, then `http/1.1`). Default true.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// Ask clients for certificates from a CA (mutual TLS). Default: off.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertKeyFiles {
    /// The certificate, then any intermediates.
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// `listeners[].tls.client_auth`.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// `required`: every request needs a verified certificate; `optional`:
    /// a certificate, if sent, must verify, and callers without one use an
    /// API key or JWT.
    pub mode: ClientAuthMode,
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: String,
    /// `required` only: refuse a missing certificate in the TLS handshake
    /// (the client sees a TLS alert) instead of answering 401
    /// `client_certificate_required`. Default false.
    #[serde(default)]
    pub reject_in_handshake: bool,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    Required,
    Optional,
}

/// `clients[].cert`: which verified client certificate is this client.
/// Exactly one key.
#[derive(Debug, Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertMatchConfig {
    /// The subject common name, exactly.
    #[serde(default)]
    pub cn: Option<String>,
    /// A SAN DNS name (case-insensitive).
    #[serde(default)]
    pub dns: Option<String>,
    /// A SAN URI, exactly (e.g. a SPIFFE ID).
    #[serde(default)]
    pub uri: Option<String>,
    /// A SAN e-mail address (case-insensitive).
    #[serde(default)]
    pub email: Option<String>,
    /// Names of the listeners whose verified certificates may be this
    /// client: each listener's `client_auth.ca` is the trust anchor the
    /// name is taken from. Required when several listeners verify client
    /// certificates; default: the one that does.
    #[serde(default)]
    pub listeners: Vec<String>,
}

/// `tls:`: settings shared by every TLS listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// How often listener certificate/key files are checked for changes
    /// (and re-read when changed). SIGHUP re-reads at once. Default `60s`;
    /// `0s`: on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub reload_check_interval: Duration,
    /// `modelgate -t` and start-up warn about certificates expiring within
    /// this. Default `30d`.
    #[serde(with = "humantime_serde")]
    pub expiry_warning: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            reload_check_interval: Duration::from_secs(60),
            expiry_warning: Duration::from_secs(30 * 86400),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers 2xx.
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// `tcp` (default) or `http`.
    pub kind: HealthCheckKind,
    /// Path probed by `http` checks. Default `/health`.
    pub path: String,
    /// Time between checks. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one check. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: HealthCheckKind::Tcp,
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in metrics and logs. Default `<upstream>` or
    /// `<upstream>#<index>` when several routes share an upstream.
    #[serde(default)]
    pub name: Option<String>,
    /// Request path prefix this route serves. Default `/`.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// Glob(s) over the `model` field of an OpenAI-style JSON body, e.g.
    /// `llama-*` or `[llama-*, meta-*]`. Absent: any model, or none.
    #[serde(default)]
    pub model: Option<OneOrMany>,
    /// Upstream pool name (a key of `upstreams`).
    pub upstream: String,
    /// Policy name (a key of `policies`). Default `default`.
    #[serde(default = "default_policy")]
    pub policy: String,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// What a route's calls may do; unknown keys are rejected.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// PII masking of responses and prompts.
    #[serde(default)]
    pub mask: MaskPolicy,
    /// Access rules, evaluated in order; the first that holds decides
    /// (`allow`, `deny`, `require_approval`). None holding: allow.
    #[serde(default)]
    pub rules: Vec<crate::policy::RuleConfig>,
}

/// How callers prove who they are, besides `clients` API keys.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// JWT bearer tokens (OIDC access tokens): issuer, audience, keys.
    #[serde(default)]
    pub jwt: Option<crate::identity::jwt::JwtConfig>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct MaskPolicy {
    /// Entities masked in responses: `all` (default: every built-in and
    /// custom entity), `none`, or a list such as `[EMAIL, CREDIT_CARD]`.
    pub response: EntitySet,
    /// Entities masked in prompts before they reach the model. Default `none`.
    pub request: EntitySet,
    /// Replacement style: `label` (default), `partial` or `hash`.
    pub style: crate::mask::replace::Style,
    /// Per-entity style overrides, e.g. `{CREDIT_CARD: partial}`.
    pub styles: BTreeMap<String, crate::mask::replace::Style>,
}

impl Default for MaskPolicy {
    fn default() -> Self {
        MaskPolicy {
            response: EntitySet::Keyword("all".into()),
            request: EntitySet::Keyword("none".into()),
            style: Default::default(),
            styles: BTreeMap::new(),
        }
    }
}

/// `all`, `none`, or a list of entity names.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum EntitySet {
    Keyword(String),
    List(Vec<String>),
}

/// A configuration string that must never be printed: `Debug` redacts it.
#[derive(Deserialize, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn default_queue_capacity() -> usize {
    8192
}
fn default_block_timeout() -> Duration {
    Duration::from_millis(250)
}
fn default_fail_closed_after() -> Duration {
    Duration::from_secs(5)
}
fn default_audit_body_bytes() -> usize {
    64 * 1024
}
fn default_rotate_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_fsync_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_audit_index() -> String {
    "modelgate-audit".into()
}
fn default_batch_size() -> usize {
    500
}
fn default_flush_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_sink_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_buffer() -> usize {
    100_000
}
fn default_credential_header() -> String {
    "authorization".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_true() -> bool {
    true
}
fn default_path_prefix() -> String {
    "/".into()
}
fn default_policy() -> String {
    "default".into()
}
