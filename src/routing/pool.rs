//! Upstream pools: the model hosts behind one `upstreams.<name>` entry.
//! Owns host resolution, round-robin selection with failover (never the same
//! host twice for one request), active health checks (Pingora's, observed so
//! `/readyz` and metrics can see them) and the per-pool peer options.

use crate::config::{ConfigError, HealthCheckKind, UpstreamConfig};
use crate::credentials::UpstreamCredential;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::services::background::{background_service, GenBackgroundService};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, LoadBalancer};
use std::net::ToSocketAddrs;
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
}

/// The background service that health-checks a pool; add it to the server.
pub type HealthService = GenBackgroundService<LoadBalancer<RoundRobin>>;

impl UpstreamPool {
    /// Resolves the hosts and builds the pool plus its health-check service.
    pub fn build(
        name: &str,
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<(UpstreamPool, HealthService), ConfigError> {
        let mut addrs = Vec::new();
        for (i, host) in cfg.hosts.iter().enumerate() {
            let resolved = host.to_socket_addrs().map_err(|e| {
                ConfigError::at(
                    format!("upstreams.{name}.hosts[{i}]"),
                    format!("cannot resolve `{host}`: {e}"),
                )
            })?;
            for a in resolved {
                if !addrs.contains(&a) {
                    addrs.push(a);
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
                let host = cfg
                    .host_header
                    .clone()
                    .unwrap_or_else(|| "localhost".into());
                let mut hc = HttpHealthCheck::new(&host, false);
                hc.req.set_uri(cfg.health_check.path.parse().map_err(|_| {
                    ConfigError::at(
                        format!("upstreams.{name}.health_check.path"),
                        "invalid path",
                    )
                })?);
                hc.peer_template.options.connection_timeout = Some(cfg.health_check.timeout);
                hc.peer_template.options.read_timeout = Some(cfg.health_check.timeout);
                Box::new(hc)
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

    /// `(address, healthy)` for every host.
    pub fn host_health(&self) -> Vec<(String, bool)> {
        self.lb
            .backends()
            .get_backend()
            .iter()
            .map(|b| (b.addr.to_string(), self.lb.backends().ready(b)))
            .collect()
    }

    /// The peer for `backend`, with this pool's timeouts.
    pub fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr.clone(), false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        peer
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
