//! The Pingora `ProxyHttp` implementation: wiring only. Each hook hands its
//! concern to the module that owns it: identity (who), intake (body, model),
//! access (policy rules, rate limits), routing (route, pool, host), credentials (header swap), mask (prompts and
//! streamed responses), errors (what the client sees), metrics. Logic longer than a screen belongs in those modules.

mod access;
mod context;
pub mod intake;
mod recording;

pub use context::RequestCtx;

use crate::approval::Approvals;
use crate::audit::record::{Decision, Entry};
use crate::audit::writer::AuditWriter;
use crate::audit::Audit;
use crate::config::{Config, ConfigError};
use crate::errors::ClientError;
use crate::identity::jwt::JwtVerifier;
use crate::identity::{AuthError, ClientRegistry};
use crate::mask::codec::ResponseMasker;
use crate::mask::{MaskEngine, PolicyMasking};
use crate::metrics::Metrics;
use crate::policy::features::Features;
use crate::policy::limits::Limiter;
use crate::policy::screen::Screen;
use crate::policy::{KnownNames, Policy};
use crate::routing::pool::HealthService;
use crate::routing::{Router, UpstreamPool};
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use prometheus::Histogram;
use std::sync::Arc;
use std::time::Duration;

/// The gateway: everything a request needs, built once from the config.
pub struct Gateway {
    clients: Arc<ClientRegistry>,
    router: Router,
    pools: Arc<Vec<UpstreamPool>>,
    metrics: Arc<Metrics>,
    max_body: usize,
    body_timeout: Duration,
    masks: MaskEngine,
    /// Each route's masking rules, resolved from its policy once.
    route_masking: Vec<PolicyMasking>,
    /// Each route's name and pool name, as the audit records them.
    route_labels: Vec<(Arc<str>, Arc<str>)>,
    /// Each route's time-to-first-byte and duration histograms, resolved
    /// once (a label lookup per call showed in the profile), and the
    /// duration histogram of calls that never got a route.
    route_timers: Vec<(Histogram, Histogram)>,
    unrouted_duration: Histogram,
    /// Each route's access rules, from its policy.
    route_policies: Vec<Arc<Policy>>,
    /// Every route's policy reads request bodies.
    policies_read_bodies: bool,
    /// The injection screen, when a rule uses it.
    screen: Option<Arc<Screen>>,
    limiter: Option<Arc<Limiter>>,
    audit: Option<Audit>,
    approvals: Option<Arc<Approvals>>,
}

// Header names removed by name, parsed once rather than on every call (the
// profile showed the parse of string names). Inserts keep `&'static str`
// names: Pingora parses those once either way, and copies a `HeaderName`'s.
/// Client request headers never sent upstream (see `upstream_request_filter`).
static STRIPPED_UPSTREAM: [http::HeaderName; 4] = [
    http::header::CONNECTION,
    http::HeaderName::from_static("keep-alive"),
    http::header::TRANSFER_ENCODING,
    http::HeaderName::from_static(crate::approval::APPROVAL_HEADER),
];

/// Set once this process is handing its sockets over (graceful upgrade) or
/// shutting down: responses then close their connections.
pub static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What `Gateway::build` makes: the gateway and the background services it needs.
pub struct Built {
    pub gateway: Gateway,
    pub health: Vec<HealthService>,
    pub audit_writer: Option<AuditWriter>,
    /// Keeps JWT keys fresh (a background service), with JWT configured.
    pub jwks: Option<Arc<JwtVerifier>>,
    /// The approval service (its background work and the admin API), with
    /// `approval:` configured.
    pub approvals: Option<Arc<Approvals>>,
    /// Who is calling: shared with the admin API (approvers sign in with
    /// their own key or token).
    pub clients: Arc<ClientRegistry>,
    /// Certificates close to expiry (upstream client certificates).
    pub warnings: Vec<String>,
    /// The model-list watch, with `drift:` and a check interval.
    pub models_watch: Option<crate::drift::models::ModelsWatch>,
}

impl Gateway {
    /// Builds the gateway and the health-check services its pools need.
    pub fn build(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> std::result::Result<Built, ConfigError> {
        let mut pools = Vec::new();
        let mut services = Vec::new();
        let mut warnings = Vec::new();
        for (name, up) in &config.upstreams {
            let (pool, hc) = UpstreamPool::build(
                name,
                up,
                metrics.clone(),
                config.tls.expiry_warning,
                &mut warnings,
            )?;
            pools.push(pool);
            services.push(hc);
        }
        let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
        let router = Router::new(config, &names)?;
        let masks = MaskEngine::build(config)?;
        let route_masking = router
            .routes()
            .iter()
            .map(|r| masks.policy(&r.policy))
            .collect();
        let route_labels = router
            .routes()
            .iter()
            .map(|r| {
                (
                    Arc::from(r.name.as_str()),
                    Arc::from(names[r.pool].as_str()),
                )
            })
            .collect();
        let (route_policies, screen) = compile_policies(config, &masks, &router)?;
        let limiter = match &config.rate_limits {
            Some(cfg) => Some(Arc::new(Limiter::new(cfg).map_err(ConfigError)?)),
            None => None,
        };
        let mut clients = ClientRegistry::new(&config.clients);
        if let Some(jwt) = &config.identity.jwt {
            jwt.validate().map_err(ConfigError)?;
            let verifier = JwtVerifier::new(jwt).map_err(|e| ConfigError::at("identity.jwt", e))?;
            clients = clients.with_jwt(verifier, label_groups(config));
        }
        let (audit, audit_writer) = match &config.audit {
            Some(cfg) => {
                let (a, w) = Audit::build(cfg, &masks, metrics.clone())?;
                (Some(a), Some(w))
            }
            None => (None, None),
        };
        let mut models_watch = None;
        if let (Some(cfg), Some(writer), Some(audit)) = (&config.drift, &audit_writer, &audit) {
            let alerts = crate::drift::Alerts::new(metrics.clone(), cfg.webhook.clone());
            let drift = crate::drift::Drift::build(
                cfg,
                masks.audit_rules(),
                alerts.clone(),
                &mut warnings,
            )?;
            writer.set_drift(drift);
            if !cfg.models_check_interval.is_zero() {
                models_watch = Some(crate::drift::models::ModelsWatch {
                    pools: Default::default(),
                    interval: cfg.models_check_interval,
                    path: cfg.models_path.clone(),
                    alerts,
                    audit: audit.recorder(),
                });
            }
        }
        let jwks = clients.jwt().cloned();
        let clients = Arc::new(clients);
        let approvals = config.approval.as_ref().map(|cfg| {
            Approvals::build(
                cfg,
                audit.as_ref().map(Audit::recorder),
                masks.audit_rules(),
                metrics.clone(),
            )
        });
        let route_timers = router
            .routes()
            .iter()
            .map(|r| {
                let name = [r.name.as_str()];
                (
                    metrics.ttfb.with_label_values(&name),
                    metrics.duration.with_label_values(&name),
                )
            })
            .collect();
        let gateway = Gateway {
            approvals: approvals.clone(),
            masks,
            route_masking,
            route_labels,
            route_timers,
            unrouted_duration: metrics.duration.with_label_values(&["-"]),
            policies_read_bodies: route_policies.iter().all(|p| p.reads_body()),
            route_policies,
            screen,
            limiter,
            audit,
            clients: clients.clone(),
            router,
            pools: Arc::new(pools),
            metrics,
            max_body: config.limits.max_request_body_bytes,
            body_timeout: config.limits.client_body_timeout,
        };
        if let Some(w) = models_watch.as_mut() {
            w.pools = gateway.pools();
        }
        Ok(Built {
            gateway,
            health: services,
            audit_writer,
            jwks,
            approvals,
            clients,
            warnings,
            models_watch,
        })
    }

    /// The pools, shared with the admin service for `/readyz`.
    pub fn pools(&self) -> Arc<Vec<UpstreamPool>> {
        self.pools.clone()
    }

    fn record_mask_counts(&self, ctx: &RequestCtx) {
        let sides = [
            (
                "request",
                ctx.masking.request.as_ref(),
                Some(&ctx.request_mask_counts[..]),
            ),
            (
                "response",
                ctx.masking.response.as_ref(),
                ctx.masker.as_ref().map(|m| &m.counts[..]),
            ),
        ];
        for (direction, rules, counts) in sides {
            let (Some(rules), Some(counts)) = (rules, counts) else {
                continue;
            };
            for (name, n) in rules.detector.names().iter().zip(counts) {
                if *n > 0 {
                    self.metrics
                        .masked
                        .with_label_values(&[name.as_str(), direction])
                        .inc_by(*n as u64);
                }
            }
        }
        if let Some(m) = &ctx.masker {
            let overflows = m.overflows();
            if overflows > 0 {
                self.metrics
                    .mask_holdback_overflows
                    .inc_by(overflows as u64);
            }
        }
    }

    /// Who is calling: a verified client certificate when the connection
    /// has one, else the request's key or token. A listener that requires a
    /// certificate accepts nothing else. A refused certificate is named in
    /// the error, for the caller (it is its own) and the audit reason.
    fn authenticate(
        &self,
        conn: Option<&crate::tls::listener::TlsConn>,
        headers: &http::HeaderMap,
    ) -> std::result::Result<Arc<crate::identity::Client>, ClientError> {
        let refuse = |e: AuthError| ClientError::auth_failed(e.status(), e.code(), e.message());
        let Some(c) = conn else {
            return self.clients.authenticate(headers).map_err(refuse);
        };
        match &c.client_cert {
            Some(id) => self
                .clients
                .authenticate_cert(id, &c.info.listener)
                .map_err(|e| {
                    let message = format!("{} Certificate: {}.", e.message(), id.describe());
                    ClientError::auth_failed(e.status(), e.code(), &message)
                }),
            None if c.client_cert_required => Err(refuse(AuthError::CertificateRequired)),
            None => self.clients.authenticate(headers).map_err(refuse),
        }
    }

    fn pool_of(&self, ctx: &RequestCtx) -> Option<&UpstreamPool> {
        ctx.route.map(|r| &self.pools[self.router.get(r).pool])
    }

    /// Answers the client with `err` and ends the request (`Ok(true)`).
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: ClientError,
    ) -> Result<bool> {
        if matches!(err.status, 400 | 401 | 408 | 413) {
            // An unread (rest of the) body makes the connection unusable, and
            // draining it for keep-alive would bypass the body limits.
            session.set_keepalive(None);
        }
        ctx.decision.get_or_insert_with(|| Decision {
            action: "deny",
            reason: Some(err.message.clone()),
            ..Default::default()
        });
        ctx.error = Some(recording::error_info(&err, None));
        write_error(session, ctx, &err).await?;
        Ok(true)
    }

    /// Takes a slot on the audit queue; `Err` is the 503 to answer with.
    async fn audit_slot(
        &self,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<Option<crate::audit::Slot>, ClientError> {
        let Some(audit) = &self.audit else {
            return Ok(None);
        };
        audit.slot().await.map_err(|r| {
            ctx.decision = Some(Decision {
                action: "refused",
                reason: Some(r.as_str().into()),
                ..Default::default()
            });
            ClientError::audit_unavailable()
        })
    }
}

/// Each route's compiled rules (policies shared between routes are compiled
/// once), and the injection screen if any rule uses it.
#[allow(clippy::type_complexity)]
fn compile_policies(
    config: &Config,
    masks: &MaskEngine,
    router: &Router,
) -> std::result::Result<(Vec<Arc<Policy>>, Option<Arc<Screen>>), ConfigError> {
    let known = KnownNames {
        clients: config.clients.iter().map(|c| c.name.clone()).collect(),
        groups: config
            .clients
            .iter()
            .flat_map(|c| c.groups.iter().cloned())
            .collect(),
        open: config.identity.jwt.is_some(),
        approval: config.approval.is_some(),
    };
    // Every policy, used by a route or not, so a bad rule never waits for a
    // route to reveal it.
    let mut compiled: std::collections::HashMap<&str, Arc<Policy>> = Default::default();
    for (name, p) in &config.policies {
        let policy = Policy::compile(&format!("policies.{name}.rules"), &p.rules, &known, |i| {
            masks.rule(name, i)
        })?;
        compiled.insert(name.as_str(), Arc::new(policy));
    }
    compiled
        .entry("default")
        .or_insert_with(|| Arc::new(Policy::default()));
    let screen = compiled
        .values()
        .any(|p| p.uses_screen())
        .then(|| Arc::new(Screen::builtin()));
    let per_route = router
        .routes()
        .iter()
        .map(|r| compiled[r.policy.as_str()].clone())
        .collect();
    Ok((per_route, screen))
}

/// Groups a JWT caller's metrics label may name: those the configuration
/// names (in rules and rate limits), so label values stay bounded.
fn label_groups(config: &Config) -> Vec<String> {
    let mut groups: Vec<String> = config
        .rate_limits
        .iter()
        .flat_map(|r| r.groups.keys().cloned())
        .collect();
    for p in config.policies.values() {
        for rule in &p.rules {
            if let Some(g) = &rule.when.groups {
                groups.extend(g.to_vec());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| seen.insert(g.clone()));
    groups
}

/// Writes an OpenAI-shaped JSON error with `x-request-id`.
async fn write_error(session: &mut Session, ctx: &RequestCtx, err: &ClientError) -> Result<()> {
    let body = err.body();
    let mut resp = json_header(err.status, ctx, body.len())?;
    if err.status == 401 {
        resp.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
    }
    if let Some(secs) = err.retry_after {
        resp.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

fn json_header(status: u16, ctx: &RequestCtx, len: usize) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, len)?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    Ok(resp)
}

/// Raised by `upstream_peer` when a pool has no healthy host.
const NO_HEALTHY_HOST: ErrorType = ErrorType::Custom("no_healthy_host");

/// The client error for a proxy failure; `None` when the client is gone.
fn client_error_for(e: &Error) -> Option<ClientError> {
    use ErrorType::*;
    Some(match e.etype() {
        t if *t == NO_HEALTHY_HOST => ClientError::no_healthy_upstream(),
        HTTPStatus(504) => ClientError::gateway_timeout(),
        HTTPStatus(code) if *code >= 500 => ClientError::bad_gateway(),
        HTTPStatus(code) => {
            ClientError::new(*code, "invalid_request_error", None, "Request refused.")
        }
        ConnectTimedout | ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            ClientError::gateway_timeout()
        }
        _ => match e.esource() {
            ErrorSource::Upstream => ClientError::bad_gateway(),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => return None,
                _ => ClientError::bad_request("Malformed request."),
            },
            ErrorSource::Internal | ErrorSource::Unset => ClientError::internal(),
        },
    })
}

fn upstream_error_kind(e: &Error) -> &'static str {
    use ErrorType::*;
    if let Some(kind) = crate::tls::upstream::error_kind(e) {
        return kind;
    }
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => "timeout",
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | SocketError => "connect",
        t if *t == NO_HEALTHY_HOST => "no_healthy_host",
        _ => "io",
    }
}

impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// No downstream modules. Pingora's default adds its response
    /// compression module switched off (level 0), which still ran its
    /// header and body hooks on every call (two allocations and 0.6 % of
    /// the passthrough profile); modelgate never compresses responses.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.metrics.in_flight.inc();
        ctx.in_flight = true;
        // The connection's TLS facts, and who is calling (answered below,
        // once the audit slot is taken).
        let auth = {
            let conn = crate::tls::listener::conn(session);
            ctx.tls = conn.map(|c| c.info.clone());
            self.authenticate(conn, &session.req_header().headers)
        };
        // Room for this call's final record, whatever happens next.
        match self.audit_slot(ctx).await {
            Ok(slot) => ctx.audit_slot = slot,
            Err(err) => return self.reject(session, ctx, err).await,
        }
        match auth {
            Ok(client) => ctx.client = Some(client),
            Err(err) => return self.reject(session, ctx, err).await,
        }

        let req = session.req_header();
        ctx.has_body = req.headers.contains_key(http::header::CONTENT_LENGTH)
            || req.headers.contains_key(http::header::TRANSFER_ENCODING);
        ctx.body = match intake::read_body(session, self.max_body, self.body_timeout).await {
            Ok(body) => body,
            Err(err) => return self.reject(session, ctx, err).await,
        };
        // Where every route's policy reads the body, its features are read
        // with the `model` in one pass (the probe then has nothing to add);
        // elsewhere only the model is read, which costs less.
        let with_features = self.policies_read_bodies
            && !ctx.body.is_empty()
            && intake::is_json(session.req_header(), &ctx.body);
        let read = match with_features
            .then(|| Features::with_model(&ctx.body))
            .flatten()
        {
            Some((features, model)) => {
                ctx.features = Some(features);
                Ok(model)
            }
            None => intake::probe_model(session.req_header(), &ctx.body),
        };
        ctx.model = match read {
            Ok(model) => model,
            Err(err) => return self.reject(session, ctx, err).await,
        };

        let path = session.req_header().uri.path();
        if let Err(err) = intake::check_path(path) {
            return self.reject(session, ctx, err).await;
        }
        if let Some(id) = path.strip_prefix(access::STATUS_PATH) {
            if self.approvals.is_some() {
                let id = id.to_string();
                return self.approval_status(session, ctx, &id).await;
            }
        }
        match self.router.route_index(path, ctx.model.as_deref()) {
            Some(route) => ctx.route = Some(route),
            None => {
                let err = ClientError::not_found(path);
                return self.reject(session, ctx, err).await;
            }
        }
        ctx.masking = self.route_masking[ctx.route.expect("just set")].clone();
        // Rules read the prompt as the client sent it, before request masking.
        if let Err(err) = self
            .check_access(ctx, session.req_header().uri.path())
            .await
        {
            return self.reject(session, ctx, err).await;
        }
        // Room for the `begin` record before an approval is used up, so a
        // full audit queue never burns one.
        let begin_slot = match &self.audit {
            Some(_) => match self.audit_slot(ctx).await {
                Ok(slot) => slot,
                Err(err) => return self.reject(session, ctx, err).await,
            },
            None => None,
        };
        if let Err(err) = self.approve(session, ctx).await {
            return self.reject(session, ctx, err).await;
        }
        if let Some(rules) = &ctx.masking.request {
            if !ctx.body.is_empty() && intake::is_json(session.req_header(), &ctx.body) {
                let mut counts = vec![0; rules.entity_count()];
                if let Some(masked) = crate::mask::mask_request_json(&ctx.body, rules, &mut counts)
                {
                    ctx.body = Bytes::from(masked);
                }
                ctx.request_mask_counts = counts;
            }
        }
        // Not forwarded without a `begin` record queued (under `drop`, at
        // least counted).
        if let Some(audit) = &self.audit {
            let call = recording::call(ctx, session.req_header(), &self.route_labels);
            if let Some(slot) = begin_slot {
                if !audit.send(slot, Entry::Begin(call.clone())) && audit.refuses_unrecorded() {
                    let err = ClientError::audit_unavailable();
                    return self.reject(session, ctx, err).await;
                }
            }
            ctx.capture = Some(crate::audit::record::Capture::new(audit.capture_limit));
            ctx.call = Some(call);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let pool = self
            .pool_of(ctx)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        match pool.select(&ctx.tried) {
            Some(backend) => {
                let peer = pool.peer(&backend);
                ctx.tried.push(backend);
                Ok(Box::new(peer))
            }
            // Both answer 502, as nginx does for "no live upstreams".
            None if ctx.tried.is_empty() => {
                let mut e = Error::explain(
                    NO_HEALTHY_HOST,
                    format!("pool {}: no healthy host", pool.name),
                );
                e.esource = ErrorSource::Upstream;
                Err(e)
            }
            None => Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("pool {}: every healthy host failed", pool.name),
            ),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(pool) = self.pool_of(ctx) else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        pool.credential.apply(req);
        ctx.forwarded = Some(std::time::Instant::now());
        // Plain bodies only: the masker must read what the model says.
        req.insert_header(
            "accept-encoding",
            http::HeaderValue::from_static("identity"),
        )?;
        if let Some(host) = &pool.host_header {
            req.insert_header(http::header::HOST, host.as_str())?;
        }
        // Hop-by-hop (the upstream connection is ours to keep alive), the
        // framing (the body was read whole; it goes up with an exact length),
        // and the gateway's business, not the model's.
        crate::credentials::strip_headers(req, &STRIPPED_UPSTREAM);
        if ctx.has_body {
            req.insert_header(http::header::CONTENT_LENGTH, ctx.body.len())?;
        }
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Replay the body read in request_filter (once per upstream attempt).
        *body = (end_of_stream && !ctx.body.is_empty()).then(|| ctx.body.clone());
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let now = std::time::Instant::now();
        ctx.response_started = Some(now);
        if DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
            // `Connection: close`: clients move to the new process (after a
            // hand-over) or another replica instead of reusing a connection
            // this process is about to drop.
            session.set_keepalive(None);
        }
        if let Some(r) = ctx.route {
            self.route_timers[r]
                .0
                .observe(now.duration_since(ctx.started).as_secs_f64());
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if ctx.capture.is_some() {
            ctx.response_content_type = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
        }
        if let Some(rules) = &ctx.masking.response {
            let encoded = resp
                .headers
                .get(http::header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
            let content_type = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            ctx.masker = ResponseMasker::for_content_type(
                content_type,
                rules.clone(),
                self.masks.max_json_body,
            );
            if let Some(masker) = &ctx.masker {
                let declared: Option<usize> = resp
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                if let (Some(limit), Some(len)) = (masker.whole_body_limit(), declared) {
                    if len > limit {
                        // Known before any byte is sent: a clean 502, not a cut-off 200.
                        return Error::e_explain(
                            ErrorType::HTTPStatus(502),
                            format!(
                                "JSON response of {len} bytes exceeds masking.max_json_body_bytes"
                            ),
                        );
                    }
                }
                if encoded {
                    // A compressed body cannot be masked; never pass it through unmasked.
                    return Error::e_explain(
                        ErrorType::HTTPStatus(502),
                        "upstream sent a compressed body despite Accept-Encoding: identity",
                    );
                }
                resp.remove_header(&http::header::CONTENT_LENGTH);
                if !session.as_downstream().is_http2() {
                    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some(meter), Some(b)) = (ctx.usage.as_mut(), body.as_ref()) {
            meter.feed(b);
        }
        if let Some(masker) = ctx.masker.as_mut() {
            let chunk = body.take().unwrap_or_default();
            let mut out = Vec::with_capacity(chunk.len() + 64);
            if let Err(e) = masker.feed(&chunk, end_of_stream, &mut out) {
                // Abort rather than send text that could not be masked.
                return Error::e_explain(ErrorType::InternalError, e.to_string());
            }
            *body = (!out.is_empty()).then(|| Bytes::from(out));
        }
        if let (Some(capture), Some(b)) = (ctx.capture.as_mut(), body.as_ref()) {
            capture.push(b);
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(pool) = self.pool_of(ctx) {
            let kind = upstream_error_kind(&e);
            self.metrics
                .upstream_errors
                .with_label_values(&[pool.name.as_str(), kind])
                .inc();
            if kind.starts_with("tls_") {
                // Logged here too: a retry on another host may succeed and
                // the failure would otherwise go unseen.
                log::warn!("pool {}: TLS with {peer} failed [{kind}]: {e}", pool.name);
            }
            // Nothing was sent yet: another host can take the call.
            if ctx.tried.len() < pool.backend_count() {
                e.set_retry(true);
            }
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        if let (Some(pool), ErrorSource::Upstream) = (self.pool_of(ctx), e.esource()) {
            self.metrics
                .upstream_errors
                .with_label_values(&[pool.name.as_str(), upstream_error_kind(&e)])
                .inc();
        }
        // The whole body is held in ctx, so any method can be replayed when a
        // reused keep-alive connection turned out to be closed (ReusedOnly).
        e.retry.decide_reuse(client_reused);
        if e.retry() && client_reused {
            // A stale keep-alive connection: the host is not at fault, so it
            // may be chosen again (on a fresh connection).
            ctx.tried.pop();
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // The full error (which may name a peer address) goes to the log only.
        log::warn!("request {} failed: {e}", ctx.request_id);
        let mut client_err = client_error_for(e);
        if session.response_written().is_some()
            && client_err
                .as_ref()
                .is_some_and(|c| c.code == Some("upstream_unavailable"))
        {
            client_err = Some(ClientError::upstream_closed_mid_response());
        }
        ctx.error = Some(match &client_err {
            Some(ce) => recording::error_info(ce, Some(e)),
            None => recording::proxy_error_info(e),
        });
        let Some(err) = client_err else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if e.etype() == &NO_HEALTHY_HOST {
            if let Some(pool) = self.pool_of(ctx) {
                self.metrics
                    .upstream_errors
                    .with_label_values(&[pool.name.as_str(), "no_healthy_host"])
                    .inc();
            }
        }
        if session.response_written().is_none() {
            if let Err(write_err) = write_error(session, ctx, &err).await {
                log::debug!("could not send error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: err.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.in_flight {
            self.metrics.in_flight.dec();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.map_or("-", |r| self.router.get(r).name.as_str());
        let client = ctx.client.as_deref().map_or("-", |c| &*c.label);
        let mut code = itoa::Buffer::new();
        self.metrics
            .requests
            .with_label_values(&[route, code.format(status), client])
            .inc();
        ctx.route
            .map_or(&self.unrouted_duration, |r| &self.route_timers[r].1)
            .observe(ctx.started.elapsed().as_secs_f64());
        self.record_mask_counts(ctx);
        self.charge_tokens(ctx, status);
        if let (Some(audit), Some(slot)) = (&self.audit, ctx.audit_slot.take()) {
            // Moved, not cloned: the writer has touched this count (it
            // dropped the `begin` record's reference), so a clone here and a
            // drop with the context were two cross-core cache misses, 0.14 µs
            // per call in the full JSON profile.
            let call = match ctx.call.take() {
                Some(call) => call,
                None => recording::call(ctx, session.req_header(), &self.route_labels),
            };
            let audit_rules = self.masks.audit_rules().entity_count();
            let outcome = recording::outcome(ctx, status, e, audit_rules);
            if !audit.send(slot, Entry::End(call, Box::new(outcome))) {
                log::warn!(
                    "request {}: audit writer stopped; end record lost",
                    ctx.request_id
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_failures_map_to_clean_client_errors() {
        let e = Error::explain(ErrorType::ConnectRefused, "10.1.2.3:8000 refused");
        let mut e = *e;
        e.esource = ErrorSource::Upstream;
        let ce = client_error_for(&e).unwrap();
        assert_eq!(ce.status, 502);
        let body = String::from_utf8(ce.body().to_vec()).unwrap();
        assert!(!body.contains("10.1.2.3"), "{body}");

        let mut t = *Error::explain(ErrorType::ReadTimedout, "slow");
        t.esource = ErrorSource::Upstream;
        assert_eq!(client_error_for(&t).unwrap().status, 504);
        let s = Error::explain(NO_HEALTHY_HOST, "none");
        let ce = client_error_for(&s).unwrap();
        assert_eq!((ce.status, ce.code), (502, Some("no_healthy_upstream")));
        let mut gone = *Error::explain(ErrorType::ConnectionClosed, "bye");
        gone.esource = ErrorSource::Downstream;
        assert!(client_error_for(&gone).is_none());
    }
}
