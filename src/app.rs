//! Assembly: turns a validated [`Config`] into Pingora services on a server
//! (the proxy, the admin listener, one health-check service per pool).
//! `main` and the demo both use it, so they cannot drift apart.

use crate::admin::AdminApp;
use crate::config::{Config, ConfigError};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::sync::Arc;

/// Adds every service the configuration describes to `server`.
pub fn add_services(server: &mut Server, config: &Config) -> Result<(), ConfigError> {
    let metrics = Arc::new(Metrics::new());
    let (gateway, health_services) = Gateway::build(config, metrics.clone())?;
    let pools = gateway.pools();

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "modelgate proxy",
    );
    for addr in &config.listen {
        proxy.add_tcp(addr);
    }
    server.add_service(proxy);

    if let Some(admin) = &config.admin {
        let app = AdminApp::new(admin.token.as_ref().map(|t| t.0.as_str()), pools, metrics);
        let mut service = Service::new("modelgate admin".to_string(), HttpServer::new_app(app));
        service.add_tcp(&admin.listen);
        server.add_service(service);
    }
    for hc in health_services {
        server.add_service(hc);
    }
    Ok(())
}
