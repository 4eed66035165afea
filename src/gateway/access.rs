//! The access stage of `request_filter`: the route's policy rules, then rate
//! limits and token budgets. Wiring between `crate::policy` and the request
//! context: it records the decision for the audit trail and metrics and
//! turns refusals into client errors.

use super::{Gateway, RequestCtx};
use crate::audit::record::Decision;
use crate::errors::ClientError;
use crate::policy::limits::LimitKind;
use crate::policy::{usage, Action, CallView};

impl Gateway {
    /// Decides whether the call may go on. On `Err`, `ctx.decision` says why.
    pub(super) async fn check_access(
        &self,
        ctx: &mut RequestCtx,
        path: &str,
    ) -> Result<(), ClientError> {
        let route = ctx.route.expect("routed before access");
        let client = ctx.client.clone().expect("authenticated before access");
        let policy = &self.route_policies[route];
        if !policy.is_empty() {
            let view = CallView {
                client: &client.name,
                groups: &client.groups,
                path,
                model: ctx.model.as_deref(),
                body: &ctx.body,
            };
            let eval = policy.evaluate(&view, self.screen.as_deref());
            if eval.unreadable {
                ctx.decision = Some(Decision {
                    action: "deny",
                    reason: Some("body is not a JSON object; the policy reads it".into()),
                });
                return Err(ClientError::bad_request(
                    "The request body must be a JSON object: this route's policy reads it.",
                ));
            }
            if let Some(rule) = eval.rule {
                let action = rule.action.as_str();
                self.metrics
                    .policy_decisions
                    .with_label_values(&[self.router.get(route).name.as_str(), &rule.name, action])
                    .inc();
                let mut reason = format!("rule `{}`", rule.name);
                if let Some(v) = &eval.screen {
                    reason.push_str(&format!(
                        "; injection screen score {} [{}]",
                        v.score,
                        v.hits.join(", ")
                    ));
                }
                ctx.decision = Some(Decision {
                    action,
                    reason: Some(reason),
                });
                match rule.action {
                    Action::Allow => {
                        if let Some(m) = &rule.masking {
                            ctx.masking = m.clone();
                        }
                    }
                    Action::Deny => return Err(ClientError::policy_denied(&rule.message)),
                    // Until the approval workflow exists, a call that needs
                    // one is refused, saying so.
                    Action::RequireApproval => {
                        return Err(ClientError::approval_required(&format!(
                            "{} Approval is not configured on this gateway, so the call was not forwarded.",
                            rule.message
                        )))
                    }
                }
            }
        }
        if let Some(limiter) = &self.limiter {
            // Boxed: the Redis round trip's future is large, and inline it
            // would grow every call's `request_filter` future (copied on
            // each call) whether or not limits are configured.
            let admitted = Box::pin(limiter.admit(&client.name, &client.groups)).await;
            self.metrics
                .rate_limit_store_errors
                .set(limiter.store_errors() as i64);
            if let Err(l) = admitted {
                let kind = match l.kind {
                    LimitKind::Requests => "requests",
                    LimitKind::CompletionTokens => "completion_tokens",
                    LimitKind::StoreUnavailable => "store_unavailable",
                };
                self.metrics.rate_limited.with_label_values(&[kind]).inc();
                ctx.decision = Some(Decision {
                    action: "rate_limited",
                    reason: Some(l.limit.clone()),
                });
                return Err(ClientError::rate_limited(l.to_string(), l.retry_after_secs));
            }
            if limiter.has_budgets() {
                ctx.usage = Some(usage::UsageMeter::default());
            }
        }
        Ok(())
    }

    /// Charges the call's completion tokens to its budgets (in the
    /// background: the response is already sent). Error answers are free.
    pub(super) fn charge_tokens(&self, ctx: &RequestCtx, status: u16) {
        if !(200..400).contains(&status) {
            return;
        }
        let (Some(limiter), Some(meter), Some(client)) = (&self.limiter, &ctx.usage, &ctx.client)
        else {
            return;
        };
        let tokens = meter.completion_tokens();
        if tokens == 0 {
            return;
        }
        let (limiter, client) = (limiter.clone(), client.clone());
        tokio::spawn(async move {
            limiter.charge(&client.name, &client.groups, tokens).await;
        });
    }
}
