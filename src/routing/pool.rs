//! Upstream pools: the model hosts behind one `upstreams.<name>` entry.
//! Owns host resolution, round-robin selection with failover (never the same
//! host twice for one request), active health checks (Pingora's, observed so
//! `/readyz` and metrics can see them) and the per-pool peer options,
//! TLS included (`crate::tls::upstream`).

use crate::config::{ConfigError, HealthCheckKind, UpstreamConfig};
use crate::credentials::UpstreamCredential;
use crate::metrics::Metrics;
use crate::tls::upstream::UpstreamTls;
use async_trait::async_trait;
use pingora_core::services::background::{background_service, GenBackgroundService};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One pool of model hosts.
pub struct UpstreamPool {
    pub name: String,
    lb: Arc<LoadBalancer<RoundRobin>>,
    pub credential: UpstreamCredential,
    pub host_header: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    backends: usize,
    health: Arc<HealthObserver>,
    /// HTTPS to the hosts, when `tls` is configured.
    tls: Option<UpstreamTls>,
    /// Each address's host name from `hosts` (the default SNI).
    host_names: Vec<(SocketAddr, Arc<str>)>,
}

/// The background service that health-checks a pool; add it to the server.
pub type HealthService = GenBackgroundService<LoadBalancer<RoundRobin>>;

impl UpstreamPool {
    /// Resolves the hosts, reads TLS files, and builds the pool plus its
    /// health-check service. Certificate warnings go to `warnings`.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
        expiry_warning: Duration,
        warnings: &mut Vec<String>,
    ) -> Result<(UpstreamPool, HealthService), ConfigError> {
        let tls = match &cfg.tls {
            Some(t) => {
                let at = format!("upstreams.{name}.tls");
                let (tls, w) =
                    UpstreamTls::build(name, &at, t, expiry_warning).map_err(ConfigError)?;
                warnings.extend(w);
                Some(tls)
            }
            None => None,
        };
        let mut addrs = Vec::new();
        let mut host_names: Vec<(SocketAddr, Arc<str>)> = Vec::new();
        for (i, host) in cfg.hosts.iter().enumerate() {
            let resolved = host.to_socket_addrs().map_err(|e| {
                ConfigError::at(
                    format!("upstreams.{name}.hosts[{i}]"),
                    format!("cannot resolve `{host}`: {e}"),
                )
            })?;
            let host_name: Arc<str> = Arc::from(host.rsplit_once(':').map_or("", |(h, _)| h));
            for a in resolved {
                if !addrs.contains(&a) {
                    addrs.push(a);
                    host_names.push((a, host_name.clone()));
                }
            }
        }
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(|a| a.to_string()))
            .map_err(|e| ConfigError::at(format!("upstreams.{name}.hosts"), e))?;
        let health = Arc::new(HealthObserver {
            pool: name.to_string(),
            checks: AtomicUsize::new(0),
            metrics,
        });
        let inner: Box<dyn HealthCheck + Send + Sync> = match cfg.health_check.kind {
            HealthCheckKind::Tcp => {
                let mut hc = TcpHealthCheck::new();
                hc.peer_template.options.connection_timeout = Some(cfg.health_check.timeout);
                hc
            }
            HealthCheckKind::Http => {
                let path = cfg.health_check.path.parse().map_err(|_| {
                    ConfigError::at(
                        format!("upstreams.{name}.health_check.path"),
                        "invalid path",
                    )
                })?;
                // One check per host name: over TLS each is the SNI and the
                // name verified, as for the proxied calls.
                let mut by_name: Vec<(Arc<str>, HttpHealthCheck)> = Vec::new();
                for (_, host_name) in &host_names {
                    if by_name.iter().any(|(n, _)| n == host_name) {
                        continue;
                    }
                    let host = cfg.host_header.as_deref().unwrap_or("localhost");
                    let mut hc = HttpHealthCheck::new(host, false);
                    hc.req.set_uri(http::Uri::clone(&path));
                    if let Some(tls) = &tls {
                        tls.apply(&mut hc.peer_template, host_name);
                    }
                    hc.peer_template.options.connection_timeout = Some(cfg.health_check.timeout);
                    hc.peer_template.options.read_timeout = Some(cfg.health_check.timeout);
                    by_name.push((host_name.clone(), hc));
                }
                Box::new(PerHostCheck {
                    host_names: host_names.clone(),
                    checks: by_name,
                })
            }
        };
        lb.set_health_check(Box::new(ObservedHealthCheck {
            inner,
            observer: health.clone(),
        }));
        lb.health_check_frequency = Some(cfg.health_check.interval);
        lb.parallel_health_check = true;
        let service = background_service(&format!("health check {name}"), lb);
        let pool = UpstreamPool {
            name: name.to_string(),
            lb: service.task(),
            credential: UpstreamCredential::from_config(name, cfg)?,
            host_header: cfg.host_header.clone(),
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            write_timeout: cfg.write_timeout,
            idle_timeout: cfg.idle_timeout,
            backends: addrs.len(),
            health,
            tls,
            host_names,
        };
        Ok((pool, service))
    }

    /// Picks the next healthy host not yet tried by this request.
    pub fn select(&self, tried: &[Backend]) -> Option<Backend> {
        self.lb
            .select_with(b"", 256, |b, healthy| healthy && !tried.contains(b))
    }

    /// Number of distinct host addresses in the pool.
    pub fn backend_count(&self) -> usize {
        self.backends
    }

    /// Ready: health checks have run over every host at least once, and at
    /// least one host is healthy.
    pub fn is_ready(&self) -> bool {
        self.health.checks.load(Ordering::Relaxed) >= self.backends
            && self
                .lb
                .backends()
                .get_backend()
                .iter()
                .any(|b| self.lb.backends().ready(b))
    }

    /// The `Host` a request of our own (not a client's) sends to `backend`:
    /// `host_header`, else the name `hosts` gave it, with its port.
    pub fn host_for(&self, backend: &Backend) -> String {
        if let Some(h) = &self.host_header {
            return h.clone();
        }
        match (host_name(&self.host_names, backend), backend.addr.as_inet()) {
            (Some(name), Some(addr)) => format!("{name}:{}", addr.port()),
            _ => backend.addr.to_string(),
        }
    }

    /// Every host of the pool.
    pub fn backends(&self) -> Vec<Backend> {
        self.lb.backends().get_backend().iter().cloned().collect()
    }

    /// `(address, healthy)` for every host.
    pub fn host_health(&self) -> Vec<(String, bool)> {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), self.lb.backends().ready(b)))
            .collect()
    }

    /// The peer for `backend`, with this pool's timeouts and TLS.
    pub fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
        if let Some(tls) = &self.tls {
            match host_name(&self.host_names, backend) {
                Some(name) => tls.apply(&mut peer, name),
                // Not expected (every backend comes from `hosts`). Never an
                // empty SNI, which would turn verification off: the address
                // fails the name check instead.
                None => tls.apply(&mut peer, &backend.addr.to_string()),
            }
        }
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

/// The name `hosts` gave `backend`'s address.
fn host_name<'a>(names: &'a [(SocketAddr, Arc<str>)], backend: &Backend) -> Option<&'a Arc<str>> {
    let addr = backend.addr.as_inet()?;
    names.iter().find(|(a, _)| a == addr).map(|(_, n)| n)
}

/// Pingora's HTTP check with the peer options of each host's name.
struct PerHostCheck {
    host_names: Vec<(SocketAddr, Arc<str>)>,
    checks: Vec<(Arc<str>, HttpHealthCheck)>,
}

#[async_trait]
impl HealthCheck for PerHostCheck {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let named = host_name(&self.host_names, target);
        let Some((_, hc)) = named
            .and_then(|n| self.checks.iter().find(|(c, _)| c == n))
            .or(self.checks.first())
        else {
            return pingora_error::Error::e_explain(
                pingora_error::ErrorType::InternalError,
                "no health check for this host",
            );
        };
        hc.check(target).await
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.checks
            .first()
            .map_or(1, |(_, hc)| hc.health_threshold(success))
    }
}

/// Counts completed checks and exports host health, then defers to Pingora's check.
struct HealthObserver {
    pool: String,
    checks: AtomicUsize,
    metrics: Arc<Metrics>,
}

struct ObservedHealthCheck {
    inner: Box<dyn HealthCheck + Send + Sync>,
    observer: Arc<HealthObserver>,
}

#[async_trait]
impl HealthCheck for ObservedHealthCheck {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        let result = self.inner.check(target).await;
        let o = &self.observer;
        o.metrics
            .upstream_host_healthy
            .with_label_values(&[o.pool.as_str(), &target.addr.to_string()])
            .set(result.is_ok() as i64);
        if let Err(e) = &result {
            log::debug!(
                "health check failed for a host of pool {}: {:?}",
                o.pool,
                e.etype()
            );
        }
        o.checks.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        log::warn!(
            "upstream pool {}: host {} is now {}",
            self.observer.pool,
            target.addr,
            if healthy { "healthy" } else { "unhealthy" }
        );
        self.inner.health_status_change(target, healthy).await;
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}
