//! Assembly: turns a validated [`Config`] into Pingora services (the proxy
//! with its plain and HTTPS listeners, the admin listener, one health-check
//! service per pool, certificate reload). Building is split
//! from adding so that everything that can fail does so before the server
//! bootstraps (with `-u`, before it takes the old process's sockets).
//! `main` and the demo both use it, so they cannot drift apart.

use crate::admin::AdminApp;
use crate::approval::Approvals;
use crate::audit::writer::AuditWriter;
use crate::config::{Config, ConfigError};
use crate::gateway::{Built, Gateway};
use crate::identity::jwt::JwtVerifier;
use crate::identity::ClientRegistry;
use crate::metrics::Metrics;
use crate::routing::pool::HealthService;
use crate::tls::certs::SniCerts;
use crate::tls::reload::{CertReload, WatchedListener};
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::sync::Arc;

/// Everything the configuration describes, built and checked, not yet serving.
pub struct Services {
    gateway: Gateway,
    health: Vec<HealthService>,
    audit_writer: Option<AuditWriter>,
    jwks: Option<Arc<JwtVerifier>>,
    approvals: Option<Arc<Approvals>>,
    clients: Arc<ClientRegistry>,
    metrics: Arc<Metrics>,
    /// `listeners` entries: address and, for HTTPS, their TLS settings.
    listeners: Vec<(String, Option<TlsSettings>)>,
    /// h2c on the plain listeners (one flag for the proxy service).
    h2c: bool,
    reload: Option<CertReload>,
    warnings: Vec<String>,
    models_watch: Option<crate::drift::models::ModelsWatch>,
}

impl Services {
    /// Builds the gateway (resolving hosts, reading credential files,
    /// compiling detectors), its health checks, and the TLS settings of
    /// every HTTPS listener (reading and checking every certificate).
    pub fn build(config: &Config) -> Result<Services, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let Built {
            gateway,
            health,
            audit_writer,
            jwks,
            approvals,
            clients,
            mut warnings,
            models_watch,
        } = Gateway::build(config, metrics.clone())?;
        let mut listeners = Vec::new();
        let mut watched = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(tls) = &l.tls else {
                listeners.push((l.address.clone(), None));
                continue;
            };
            let name = l.name_or_default(i);
            let at = format!("listeners[{i}].tls");
            let certs_at = format!("{at}.certificates");
            let (set, w) = SniCerts::load_all(
                &certs_at,
                &tls.certificates,
                config.tls.expiry_warning,
                crate::tls::certs::Validity::Required,
            )
            .map_err(ConfigError)?;
            warnings.extend(w);
            crate::tls::reload::set_expiry(&metrics, &name, &set);
            let store = Arc::new(arc_swap::ArcSwap::from_pointee(set));
            let settings =
                crate::tls::listener::tls_settings(&name, &at, tls, store.clone(), metrics.clone())
                    .map_err(ConfigError)?;
            listeners.push((l.address.clone(), Some(settings)));
            watched.push(WatchedListener::new(
                &name,
                certs_at,
                tls.certificates.clone(),
                store,
            ));
        }
        let reload = (!watched.is_empty()).then(|| CertReload {
            listeners: watched,
            interval: config.tls.reload_check_interval,
            warn_within: config.tls.expiry_warning,
            metrics: metrics.clone(),
        });
        let h2c = config.listeners.iter().any(|l| l.tls.is_none() && l.h2c);
        Ok(Services {
            listeners,
            h2c,
            reload,
            warnings,
            gateway,
            health,
            audit_writer,
            jwks,
            approvals,
            clients,
            metrics,
            models_watch,
        })
    }

    /// Certificates close to expiry, for `-t` and the start-up log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Adds the services to `server`.
    pub fn add_to(self, server: &mut Server, config: &Config) {
        // Process-wide, before any connection is read (a config change is
        // a new process: see `reload`).
        pingora_core::protocols::http::v1::common::set_preserve_header_case(
            config.http.preserve_header_case,
        );
        let pools = self.gateway.pools();
        let mut proxy = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            self.gateway,
            "modelgate proxy",
        );
        if self.h2c {
            // Per service in Pingora; ignored on TLS connections (ALPN decides there).
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            if let Some(app) = proxy.app_logic_mut() {
                app.server_options = Some(options);
            }
        }
        for addr in &config.listen {
            proxy.add_listener(plain_listener(addr));
        }
        for (addr, tls) in self.listeners {
            match tls {
                Some(mut settings) => {
                    // `server.downstream_tls_offload_*`, when set.
                    settings.set_offload_threadpool_from_server_conf(&server.configuration);
                    proxy.add_tls_with_settings(&addr, None, settings);
                }
                None => proxy.add_listener(plain_listener(&addr)),
            }
        }
        server.add_service(proxy);
        if let Some(reload) = self.reload {
            server.add_service(pingora_core::services::background::background_service(
                "modelgate certificate reload",
                reload,
            ));
        }

        if let Some(admin) = &config.admin {
            let app = AdminApp::new(
                admin.token.as_ref().map(|t| t.0.as_str()),
                pools,
                self.metrics,
                self.approvals.clone().map(|a| (a, self.clients.clone())),
            );
            let mut service = Service::new("modelgate admin".to_string(), app);
            service.add_tcp(&admin.listen);
            server.add_service(service);
        }
        for hc in self.health {
            server.add_service(hc);
        }
        if let Some(verifier) = self.jwks {
            server.add_service(pingora_core::services::background::background_service(
                "modelgate jwks refresh",
                JwksRefresh(verifier),
            ));
        }
        if let Some(approvals) = self.approvals {
            server.add_service(pingora_core::services::background::background_service(
                "modelgate approvals",
                ApprovalsService(approvals),
            ));
        }
        if let Some(watch) = self.models_watch {
            server.add_service(pingora_core::services::background::background_service(
                "modelgate model-list watch",
                watch,
            ));
        }
        match self.audit_writer {
            Some(writer) => {
                server.add_service(pingora_core::services::background::background_service(
                    "modelgate audit writer",
                    writer,
                ));
            }
            None => log::warn!("audit is off: calls are not recorded (see `audit:` in the README)"),
        }
    }
}

/// Watches Pingora's execution phases and sets [`crate::gateway::DRAINING`]
/// once the process hands its sockets over or starts shutting down. Made
/// from `Server::watch_execution_phase` before `run_forever` (a background
/// service, so it also runs in a daemonised child).
pub struct DrainWatch(
    std::sync::Mutex<
        Option<tokio::sync::broadcast::Receiver<pingora_core::server::ExecutionPhase>>,
    >,
);

impl DrainWatch {
    pub fn new(
        phases: tokio::sync::broadcast::Receiver<pingora_core::server::ExecutionPhase>,
    ) -> Self {
        DrainWatch(std::sync::Mutex::new(Some(phases)))
    }
}

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for DrainWatch {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        use pingora_core::server::ExecutionPhase as P;
        let Some(mut phases) = self.0.lock().expect("not poisoned").take() else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(
                    P::GracefulUpgradeTransferringFds
                    | P::GracefulUpgradeCloseTimeout
                    | P::GracefulTerminate
                    | P::ShutdownStarted
                    | P::ShutdownGracePeriod,
                ) => {
                    crate::gateway::DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
                    log::info!("draining: responses now close their connections");
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Connects the approval store, sends webhook notices and expires overdue
/// requests, until shutdown.
struct ApprovalsService(Arc<Approvals>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for ApprovalsService {
    async fn start(&self, shutdown: pingora_core::server::ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

/// Keeps the JWT verifier's keys fresh until shutdown.
struct JwksRefresh(Arc<JwtVerifier>);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        tokio::select! {
            _ = self.0.clone().refresh_loop() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A plain-HTTP client listener without Pingora's 64 KiB per-connection read
/// buffer. Pingora's HTTP/1 session reads into buffers of its own, so over
/// plain TCP that buffer only adds a copy of every read and a zeroed 64 KiB
/// allocation per connection (the load test's sweep: 63.3 -> 59.0 MB per
/// 1,000 open streams). TLS listeners keep it: OpenSSL reads records in
/// small pieces, and the buffer saves system calls there.
fn plain_listener(addr: &str) -> pingora_core::listeners::ListenerConfig {
    pingora_core::listeners::ListenerConfig::tcp(addr).l4_buffer(
        pingora_core::listeners::L4BufferSettings {
            read: Some(0),
            write: None,
        },
    )
}
