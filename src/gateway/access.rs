//! The access stage of `request_filter`: the route's policy rules, then rate
//! limits and token budgets, then human approval where a rule requires it
//! (hold or ticket). Wiring between `crate::policy`, `crate::approval` and
//! the request context: it records the decision for the audit trail and
//! metrics and turns refusals into client errors.

use super::{Gateway, RequestCtx};
use crate::approval::store::{Approval, Mode};
use crate::approval::{request_hash, HoldEnd, NewRequest};
use crate::audit::record::{ApprovalRef, Decision};
use crate::errors::ClientError;
use crate::policy::limits::LimitKind;
use crate::policy::{usage, Action, CallView};
use pingora_proxy::Session;

/// Where a client reads its approval request's status (proxy listener).
pub const STATUS_PATH: &str = "/modelgate/approvals/";

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
                features: ctx.features.as_ref(),
            };
            let eval = policy.evaluate(&view, self.screen.as_deref());
            if eval.unreadable {
                ctx.decision = Some(Decision {
                    action: "deny",
                    reason: Some(
                        "body is not a JSON object as the policy reads one (a key repeated, \
                         or serde_json's reserved key)"
                            .into(),
                    ),
                    ..Default::default()
                });
                return Err(ClientError::bad_request(
                    "The request body must be a JSON object that gives each key once \
                     (in any letter case) and no `$serde_json::private::RawValue` key: \
                     this route's policy reads it.",
                ));
            }
            if let Some(rule) = eval.rule {
                let action = rule.action.as_str();
                self.metrics
                    .policy_decisions
                    .with_label_values(&[self.router.get(route).name.as_str(), &rule.name, action])
                    .inc();
                let mut reason = format!("rule `{}`", rule.name);
                // The screen's verdict, where it decided (another rule may
                // have run it).
                if let Some(v) = eval.screen.as_ref().filter(|_| rule.screens()) {
                    reason.push_str(&format!(
                        "; injection screen score {} [{}]",
                        v.score,
                        v.hits.join(", ")
                    ));
                }
                ctx.decision = Some(Decision {
                    action,
                    reason: Some(reason),
                    ..Default::default()
                });
                match rule.action {
                    Action::Allow => {
                        if let Some(m) = &rule.masking {
                            ctx.masking = m.clone();
                        }
                    }
                    Action::Deny => return Err(ClientError::policy_denied(&rule.message)),
                    // Rate limits first (so a flood never reaches approvers),
                    // then `approve`.
                    Action::RequireApproval => {
                        ctx.approval_rule =
                            Some((rule.name.clone(), rule.approval, rule.message.clone()));
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
                    ..Default::default()
                });
                return Err(ClientError::rate_limited(l.to_string(), l.retry_after_secs));
            }
            if limiter.has_budgets() {
                ctx.usage = Some(usage::UsageMeter::default());
            }
        }
        Ok(())
    }

    /// The approval step, for a call a `require_approval` rule holds for:
    /// redeems the client's `x-modelgate-approval`, or creates a request and
    /// holds the call or answers with a ticket.
    pub(super) async fn approve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), ClientError> {
        let Some((rule, mode, message)) = ctx.approval_rule.take() else {
            return Ok(());
        };
        let approvals = self
            .approvals
            .as_ref()
            .expect("config validation: require_approval needs `approval:`");
        let client = ctx.client.clone().expect("authenticated before access");
        let route = ctx.route.expect("routed before access");
        let route_name = self.router.get(route).name.as_str();
        let req = session.req_header();
        let binding = request_hash(
            req.method.as_str(),
            req.uri.path_and_query().map_or("", |p| p.as_str()),
            req.headers
                .get(http::header::CONTENT_TYPE)
                .map_or(&b""[..], |v| v.as_bytes()),
            route_name,
            &rule,
            &ctx.body,
        );
        let presented = req
            .headers
            .get(crate::approval::APPROVAL_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
        if let Some(id) = presented {
            return match approvals
                .redeem(&id, &client, &binding, &ctx.request_id)
                .await
            {
                Ok(a) => {
                    self.approval_decided(ctx, &a, "used");
                    Ok(())
                }
                Err(e) => {
                    if let Some(d) = &mut ctx.decision {
                        d.reason = Some(format!("{}; {}", rule, e.message));
                    }
                    Err(e)
                }
            };
        }
        let reason = ctx
            .decision
            .as_ref()
            .and_then(|d| d.reason.clone())
            .unwrap_or_else(|| format!("rule `{rule}`"));
        let approval = approvals
            .request(NewRequest {
                client: &client,
                route: route_name,
                path: session.req_header().uri.path(),
                model: ctx.model.as_deref(),
                rule: &rule,
                reason: &reason,
                mode,
                body: &ctx.body,
                request_sha256: &binding,
                call_id: &ctx.request_id,
            })
            .await?;
        if mode == Mode::Ticket {
            self.approval_decided(ctx, &approval, "pending");
            let url = format!("{STATUS_PATH}{}", approval.id);
            return Err(ClientError::approval_required(
                &format!(
                    "{message} Approval {} was requested; once it is approved, repeat this exact request with the header `x-modelgate-approval: {}` (status: GET {url}).",
                    approval.id, approval.id
                ),
                &approval.id,
                url,
            ));
        }
        // Hold: wait for the decision, watching for the client giving up: a
        // close (FIN) or a broken connection. A request pipelined meanwhile
        // is not a goodbye: with pipelining on, Pingora keeps its bytes and
        // serves it after this one (RFC 9112 §9.3.2). Should bytes still
        // end the idle read, the connection is not kept alive past this answer.
        let downstream = &mut session.downstream_session;
        downstream.set_pipelining_enabled(true);
        let gone = async move {
            if let Err(e) = downstream.read_body_or_idle(true).await {
                if *e.etype() == pingora_error::ErrorType::ConnectError {
                    downstream.set_keepalive(None);
                    std::future::pending::<()>().await;
                }
            }
        };
        match approvals
            .hold(&approval, &client, &ctx.request_id, gone)
            .await?
        {
            Ok(a) => {
                self.approval_decided(ctx, &a, "used");
                Ok(())
            }
            Err(HoldEnd::Denied(a)) => {
                self.approval_decided(ctx, &a, "denied");
                let by = a.decided_by.as_deref().unwrap_or("an approver");
                let why = a
                    .comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                Err(ClientError::approval_denied(
                    format!("Approval {} was denied by {by}{why}", a.id),
                    &a.id,
                ))
            }
            Err(HoldEnd::Expired(a)) => {
                self.approval_decided(ctx, &a, "expired");
                let msg = if a.status == crate::approval::store::Status::Used {
                    format!(
                        "Approval {} was already used; the call was not forwarded.",
                        a.id
                    )
                } else {
                    format!(
                        "Approval {} was not granted within {}; the call was not forwarded.",
                        a.id,
                        humantime::format_duration(approvals.hold_timeout())
                    )
                };
                Err(ClientError::approval_expired(msg, &a.id))
            }
            Err(HoldEnd::ShuttingDown) => {
                self.approval_decided(ctx, &approval, "expired");
                let mut e = ClientError::approval_unavailable(
                    "The gateway is shutting down; the held call was withdrawn. Retry it.",
                );
                e.retry_after = Some(1);
                Err(e)
            }
            Err(HoldEnd::ClientGone) => {
                self.approval_decided(ctx, &approval, "expired");
                Err(ClientError::approval_expired(
                    "The client closed the connection while the call was held.".into(),
                    &approval.id,
                ))
            }
        }
    }

    /// `GET /modelgate/approvals/{id}`: a requester reads the status of
    /// their own approval request (anyone else's is "not found").
    pub(super) async fn approval_status(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        id: &str,
    ) -> pingora_error::Result<bool> {
        let approvals = self.approvals.as_ref().expect("checked by the caller");
        ctx.decision = Some(Decision {
            action: "approval_status",
            reason: None,
            ..Default::default()
        });
        if session.req_header().method != http::Method::GET {
            let err = ClientError::new(405, "invalid_request_error", None, "Use GET.");
            return self.reject(session, ctx, err).await;
        }
        let client = ctx
            .client
            .clone()
            .expect("authenticated before the status route");
        let found = match approvals.store() {
            Ok(store) => store.get(id).await,
            Err(e) => Err(e),
        };
        let a = match found {
            Ok(Some(a)) if a.requester == client.name => a,
            Ok(_) => {
                let err = ClientError::new(
                    404,
                    "invalid_request_error",
                    Some("approval_not_found"),
                    "No approval request with this id was made by you.",
                );
                return self.reject(session, ctx, err).await;
            }
            Err(e) => {
                log::warn!("approval store: {e}");
                let err = ClientError::approval_unavailable(
                    "The approval service is unavailable right now.",
                );
                return self.reject(session, ctx, err).await;
            }
        };
        let body = serde_json::to_vec(&serde_json::json!({
            "id": a.id,
            "status": a.status.as_str(),
            "rule": a.rule,
            "created_at_ms": a.created_at_ms,
            "expires_at_ms": a.expires_at_ms,
            "decided_by": a.decided_by,
            "comment": a.comment,
            "valid_until_ms": a.valid_until_ms,
            "header": format!("{}: {}", crate::approval::APPROVAL_HEADER, a.id),
        }))
        .expect("json values serialise");
        let resp = super::json_header(200, ctx, body.len())?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(bytes::Bytes::from(body)), true)
            .await?;
        Ok(true)
    }

    /// Names the approval in the call's decision.
    fn approval_decided(&self, ctx: &mut RequestCtx, a: &Approval, status: &'static str) {
        if let Some(d) = &mut ctx.decision {
            d.approval = Some(ApprovalRef {
                id: a.id.clone(),
                status,
                decided_by: a.decided_by.clone(),
            });
        }
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
