//! modelgate: a Layer-7 gateway for self-hosted language models, built on
//! Pingora. See README.md for what it does and how to run it; each module's
//! doc says which concern it owns.

pub mod admin;
pub mod app;
pub mod approval;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod drift;
pub mod errors;
pub mod gateway;
pub mod identity;
pub mod json;
pub mod mask;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod routing;
#[cfg(test)]
pub(crate) mod testkit;
pub mod tls;
