//! Errors a client sees: JSON in the OpenAI error shape
//! (`{"error":{"message","type","code"}}`) with the right status. Messages
//! here are written for clients: they never carry upstream addresses,
//! credentials or internal error chains (those go to the log).

use bytes::Bytes;
use serde::Serialize;

/// An error response for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub status: u16,
    /// OpenAI `type`, e.g. `invalid_request_error`, `authentication_error`.
    pub kind: &'static str,
    /// OpenAI `code`, e.g. `invalid_api_key`; `None` serialises as `null`.
    pub code: Option<&'static str>,
    pub message: String,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
    /// The approval request a ticketed call waits for: `(id, status URL)`.
    pub approval: Option<Box<(String, String)>>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_url: Option<&'a str>,
}

impl ClientError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        ClientError {
            status,
            kind,
            code,
            message: message.into(),
            retry_after: None,
            approval: None,
        }
    }

    /// Not authenticated; `code` says why (`invalid_api_key`, `token_expired`...).
    pub fn unauthorized(code: &'static str, message: &str) -> Self {
        Self::new(401, "authentication_error", Some(code), message)
    }

    /// Authentication failed: 401, or 403 (`permission_error`) for a
    /// caller proven but not admitted (an unknown client certificate).
    pub fn auth_failed(status: u16, code: &'static str, message: &str) -> Self {
        match status {
            403 => Self::new(403, "permission_error", Some(code), message),
            _ => Self::unauthorized(code, message),
        }
    }

    /// A policy rule denied the call.
    pub fn policy_denied(message: &str) -> Self {
        Self::new(403, "permission_error", Some("policy_denied"), message)
    }

    /// A policy rule wants a human to approve the call: a ticket. The
    /// client repeats the call with `x-modelgate-approval: <id>` once approved.
    pub fn approval_required(message: &str, id: &str, status_url: String) -> Self {
        let mut e = Self::new(403, "approval_required", Some("approval_required"), message);
        e.approval = Some(Box::new((id.to_string(), status_url)));
        e
    }

    /// An approver denied the call.
    pub fn approval_denied(message: String, id: &str) -> Self {
        let mut e = Self::new(403, "approval_required", Some("approval_denied"), message);
        e.approval = Some(Box::new((id.to_string(), String::new())));
        e
    }

    /// Nobody decided in time (or the client stopped waiting).
    pub fn approval_expired(message: String, id: &str) -> Self {
        let mut e = Self::new(403, "approval_required", Some("approval_expired"), message);
        e.approval = Some(Box::new((id.to_string(), String::new())));
        e
    }

    /// An `x-modelgate-approval` that does not admit this call.
    pub fn approval_invalid(message: &str) -> Self {
        Self::new(403, "approval_required", Some("approval_invalid"), message)
    }

    /// The approval store cannot take or answer the request.
    pub fn approval_unavailable(message: &str) -> Self {
        Self::new(503, "server_error", Some("approval_unavailable"), message)
    }

    /// Over a rate limit or token budget.
    pub fn rate_limited(message: String, retry_after: u64) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message,
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", None, message)
    }

    pub fn not_found(path: &str) -> Self {
        // The path comes from the client; cap what we echo back.
        let shown: String = path.chars().take(200).collect();
        Self::new(
            404,
            "invalid_request_error",
            Some("unknown_route"),
            format!("No route for `{shown}`."),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("Request body exceeds the limit of {limit} bytes."),
        )
    }

    pub fn bad_gateway() -> Self {
        Self::new(
            502,
            "upstream_error",
            Some("upstream_unavailable"),
            "The model server could not be reached.",
        )
    }

    /// The model server went away after its answer had started (the
    /// client sees the stream cut off; the audit record says this).
    pub fn upstream_closed_mid_response() -> Self {
        Self::new(
            502,
            "upstream_error",
            Some("upstream_closed_mid_response"),
            "The model server closed the connection before its answer was complete.",
        )
    }

    pub fn no_healthy_upstream() -> Self {
        Self::new(
            502,
            "upstream_error",
            Some("no_healthy_upstream"),
            "No healthy model server is available for this route.",
        )
    }

    pub fn gateway_timeout() -> Self {
        Self::new(
            504,
            "upstream_error",
            Some("upstream_timeout"),
            "The model server did not answer in time.",
        )
    }

    /// The audit trail cannot take the call's record (queue full or sink
    /// failing) and the operator chose to fail closed.
    pub fn audit_unavailable() -> Self {
        Self::new(
            503,
            "server_error",
            Some("audit_unavailable"),
            "The gateway cannot record this call right now; it was not forwarded. Retry later.",
        )
    }

    pub fn internal() -> Self {
        Self::new(500, "server_error", None, "Internal gateway error.")
    }

    /// The JSON body.
    pub fn body(&self) -> Bytes {
        let body = Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                code: self.code,
                approval_id: self.approval.as_ref().map(|a| a.0.as_str()),
                status_url: self
                    .approval
                    .as_ref()
                    .map(|a| a.1.as_str())
                    .filter(|u| !u.is_empty()),
            },
        };
        Bytes::from(serde_json::to_vec(&body).expect("plain struct serialises"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&ClientError::unauthorized("invalid_api_key", "nope").body())
                .unwrap();
        assert_eq!(v["error"]["message"], "nope");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let v: serde_json::Value =
            serde_json::from_slice(&ClientError::bad_request("x").body()).unwrap();
        assert!(v["error"]["code"].is_null());
    }
}
