//! Reference prototype for modelgate's TLS work on Pingora 0.9.1 with the
//! `openssl` backend (see /tmp/tls-design.md). Modules map to where the
//! real code goes:
//!
//! - `certs`    -> new `src/tls/certs.rs` (loading, `-t` checks, SNI store, reload)
//! - `listener` -> new `src/tls/listener.rs`, used by `app::Services::add_to`
//! - `identity` -> `src/identity/mod.rs` (`Via::ClientCert`, registry lookup)
//! - `upstream` -> `src/routing/pool.rs` (`UpstreamPool::build` / `peer`)
//! - `gateway`  -> the relevant hooks of `src/gateway/mod.rs`
//! - `model`    -> test-only upstream (modelgate has `demo::demo_service`)

pub mod certs;
pub mod gateway;
pub mod identity;
pub mod listener;
pub mod model;
pub mod upstream;

use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::ListenerConfig;
use pingora_core::server::configuration::ServerConf;
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

/// One proxy listener: plain (optionally h2c) or TLS.
pub enum Listen {
    Plain(String),
    Tls(String, TlsSettings),
}

/// The proxy service with its listeners. `h2c` is a per-*service* option in
/// Pingora (`HttpServerOptions`), ignored on TLS connections
/// (apps/mod.rs:276-280), so one flag covers every plain listener of the
/// service; per-listener h2c needs a second service.
pub fn proxy_service(
    gateway: gateway::Gateway,
    listeners: Vec<Listen>,
    h2c: bool,
) -> Service<HttpProxy<gateway::Gateway>> {
    let conf = Arc::new(ServerConf::default());
    let mut svc = pingora_proxy::http_proxy_service_with_name(&conf, gateway, "proto proxy");
    if h2c {
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        svc.app_logic_mut().expect("not started").server_options = Some(opts);
    }
    for l in listeners {
        match l {
            Listen::Plain(addr) => svc.add_tcp(&addr),
            Listen::Tls(addr, settings) => {
                svc.add_listener(ListenerConfig::tcp(addr).tls(settings))
            }
        }
    }
    svc
}

/// The stand-in model server on one TLS listener.
pub fn model_service(addr: &str, settings: TlsSettings) -> Service<model::Model> {
    let mut svc = Service::new("proto model".to_string(), model::Model);
    svc.add_listener(ListenerConfig::tcp(addr).tls(settings));
    svc
}
