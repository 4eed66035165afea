//! TLS: HTTPS listeners (certificates chosen by SNI, hot reload, client
//! certificates), and TLS to upstream pools. Pingora's `openssl` backend,
//! linked against the system libssl (see the README, "TLS").
//!
//! - [`certs`]: certificate/key/CA files, their checks (`modelgate -t`), the SNI store
//! - [`listener`]: a listener's `TlsSettings` and what a handshake hands to the HTTP layer
//! - [`reload`]: the background service that re-reads certificates
//! - [`upstream`]: per-pool TLS to model hosts and TLS error kinds
//!
//! Who a client certificate names is `identity::cert`'s business.

pub mod certs;
pub mod listener;
pub mod reload;
pub mod upstream;
