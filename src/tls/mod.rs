//! TLS: HTTPS listeners (certificates chosen by SNI, hot reload, client
//! certificates). Pingora's `openssl` backend,
//! linked against the system libssl (see the README, "TLS").
//!
//! - [`certs`]: certificate/key/CA files, their checks (`modelgate -t`), the SNI store
//! - [`listener`]: a listener's `TlsSettings` and what a handshake hands to the HTTP layer
//! - [`reload`]: the background service that re-reads certificates
//!
//! Who a client certificate names is `identity::cert`'s business.

pub mod certs;
pub mod listener;
pub mod reload;
