//! Assembly: turns a validated [`Config`] into Pingora services (the proxy,
//! the admin listener, one health-check service per pool). Building is split
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
}

impl Services {
    /// Builds the gateway (resolving hosts, reading credential files,
    /// compiling detectors) and its health checks.
    pub fn build(config: &Config) -> Result<Services, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let Built {
            gateway,
            health,
            audit_writer,
            jwks,
            approvals,
            clients,
        } = Gateway::build(config, metrics.clone())?;
        Ok(Services {
            gateway,
            health,
            audit_writer,
            jwks,
            approvals,
            clients,
            metrics,
        })
    }

    /// Adds the services to `server`.
    pub fn add_to(self, server: &mut Server, config: &Config) {
        let pools = self.gateway.pools();
        let mut proxy = pingora_proxy::http_proxy_service_with_name(
            &server.configuration,
            self.gateway,
            "modelgate proxy",
        );
        for addr in &config.listen {
            proxy.add_tcp(addr);
        }
        server.add_service(proxy);

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
