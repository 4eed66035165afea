//! Turns what a request's context has learned into the audit trail's
//! in-memory records ([`Call`], [`Outcome`]): cheap moves and clones only;
//! the writer does the encoding.

use super::RequestCtx;
use crate::audit::record::{Call, Capture, Decision, ErrorInfo, Masks, Outcome};
use crate::errors::ClientError;
use pingora_error::Error;
use pingora_http::RequestHeader;
use std::sync::Arc;

/// The call as known now (identity, route, model, the body to forward).
pub fn call(ctx: &RequestCtx, req: &RequestHeader, labels: &[(Arc<str>, Arc<str>)]) -> Arc<Call> {
    let (route, pool) = match ctx.route.map(|r| &labels[r]) {
        Some((r, p)) => (Some(r.clone()), Some(p.clone())),
        None => (None, None),
    };
    Arc::new(Call {
        id: ctx.request_id.clone(),
        started: ctx.started_wall,
        client: ctx.client.clone(),
        tls: ctx.tls.clone(),
        method: req.method.as_str().to_string(),
        path: req
            .uri
            .path_and_query()
            .map_or_else(|| req.uri.path().to_string(), |p| p.as_str().to_string()),
        route,
        pool,
        model: ctx.model.clone(),
        request_body: ctx.body.clone(),
        stored_request: Default::default(),
        stored_common: Default::default(),
    })
}

/// How the call ended. Takes the capture and mask counts out of `ctx`.
pub fn outcome(
    ctx: &mut RequestCtx,
    status: u16,
    e: Option<&Error>,
    audit_entities: usize,
) -> Outcome {
    let response_masks = Masks {
        rules: ctx
            .masking
            .response
            .clone()
            .filter(|_| ctx.masker.is_some()),
        counts: ctx
            .masker
            .as_mut()
            .map(|m| std::mem::take(&mut m.counts))
            .unwrap_or_default(),
    };
    let fully_masked = ctx.masker.is_some()
        && response_masks
            .rules
            .as_ref()
            .is_some_and(|r| r.entity_count() >= audit_entities);
    let error = ctx.error.take().or_else(|| e.map(proxy_error_info));
    let decision = ctx.decision.take().unwrap_or(Decision {
        action: "allow",
        reason: None,
        ..Default::default()
    });
    let response = ctx.capture.take().unwrap_or_else(|| Capture::new(0));
    Outcome {
        ttft: response
            .first_byte()
            .map(|t| t.duration_since(ctx.forwarded.unwrap_or(ctx.started))),
        host: ctx.upstream_host(),
        status,
        content_type: std::mem::take(&mut ctx.response_content_type),
        response,
        ttfb: ctx.response_started.map(|t| t.duration_since(ctx.started)),
        duration: ctx.started.elapsed(),
        decision,
        error,
        request_masks: Masks {
            rules: ctx.masking.request.clone(),
            counts: std::mem::take(&mut ctx.request_mask_counts),
        },
        response_masks,
        response_fully_masked: fully_masked,
    }
}

/// The audit form of an error the client was sent; `cause` is the internal error.
pub fn error_info(err: &ClientError, cause: Option<&Error>) -> ErrorInfo {
    ErrorInfo {
        kind: err.kind,
        code: err.code,
        message: err.message.clone(),
        detail: cause.map(|e| e.to_string()),
    }
}

/// A proxy error the client saw no error body for (the response had
/// started, e.g. the upstream died mid-stream, or the client left).
pub fn proxy_error_info(e: &Error) -> ErrorInfo {
    ErrorInfo {
        kind: "proxy_error",
        code: None,
        message: format!("{} ({:?})", e.etype().as_str(), e.esource()),
        detail: Some(e.to_string()),
    }
}
