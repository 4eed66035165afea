//! Access policy: what each call may do once its caller is known. Owns the
//! per-route rules ([`rules`]), the prompt-injection screen ([`screen`]),
//! rate limits and token budgets ([`limits`]) and the completion-token
//! counting budgets are charged from ([`usage`]).
//!
//! Not here: authentication (`crate::identity`), masking (`crate::mask`),
//! the approval workflow a `require_approval` rule leads to.

pub mod features;
pub mod limits;
pub mod rules;
pub mod screen;
pub mod usage;

pub use features::prompt_text;
pub use rules::{Action, CallView, Evaluation, KnownNames, Policy, RuleConfig};
