//! Upstream credentials: where the service credential comes from (inline
//! config with `${ENV}` expansion, or a file such as a mounted Kubernetes
//! Secret) and the header swap on every upstream request: the client's own
//! `Authorization`/`x-api-key` are removed, the pool's credential is added.
//!
//! The credential is held as an `http::HeaderValue` marked sensitive, and no
//! `Debug`/`Display` here prints it.

use crate::config::{ConfigError, UpstreamConfig};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::fmt;

/// The credential a pool sends upstream.
#[derive(Clone)]
pub struct UpstreamCredential {
    /// The header's name, checked as a `HeaderName` when loaded and kept as
    /// bytes for `insert_header`: a shared `Bytes` is taken as the name
    /// without a copy (a `HeaderName` is copied into one on every call).
    header: bytes::Bytes,
    value: Option<HeaderValue>,
}

impl fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UpstreamCredential({}: {})",
            String::from_utf8_lossy(&self.header),
            if self.value.is_some() {
                "<redacted>"
            } else {
                "none"
            }
        )
    }
}

/// Client headers that carry the client's own credentials; never forwarded.
/// Parsed once: a name given as a string is parsed on every removal.
const CLIENT_CREDENTIAL_HEADERS: [HeaderName; 3] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    http::header::PROXY_AUTHORIZATION,
];

impl UpstreamCredential {
    /// Loads the credential for pool `name`.
    pub fn from_config(name: &str, up: &UpstreamConfig) -> Result<Self, ConfigError> {
        let header = HeaderName::from_bytes(up.credential_header.as_bytes()).map_err(|_| {
            ConfigError::at(
                format!("upstreams.{name}.credential_header"),
                "invalid header name",
            )
        })?;
        let raw = match (&up.credential, &up.credential_file) {
            (Some(c), _) => Some(c.0.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ConfigError::at(
                            format!("upstreams.{name}.credential_file"),
                            format!("cannot read `{path}`: {e}"),
                        )
                    })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let value = raw
            .map(|raw| {
                let mut v = HeaderValue::from_str(&raw).map_err(|_| {
                    ConfigError::at(
                        format!("upstreams.{name}.credential"),
                        "is not a valid HTTP header value",
                    )
                })?;
                v.set_sensitive(true);
                Ok::<_, ConfigError>(v)
            })
            .transpose()?;
        Ok(UpstreamCredential {
            header: bytes::Bytes::copy_from_slice(header.as_str().as_bytes()),
            value,
        })
    }

    /// Strips the client's credentials from `req` and adds the pool's.
    pub fn apply(&self, req: &mut RequestHeader) {
        strip_headers(req, &CLIENT_CREDENTIAL_HEADERS);
        if let Some(v) = &self.value {
            // insert_header only fails on invalid names/values; both are pre-validated.
            let _ = req.insert_header(self.header.clone(), v.clone());
        }
    }
}

/// Removes every header named in `names` from `req`. One walk over the
/// request's few headers finds the names present, and only those are
/// removed: a removal looks its name up in the header map's hash table,
/// present or not, and most requests carry none of the names stripped.
pub fn strip_headers(req: &mut RequestHeader, names: &[HeaderName]) {
    let mut present = 0u64;
    debug_assert!(names.len() <= 64);
    for name in req.headers.keys() {
        if let Some(i) = names.iter().position(|n| n == name) {
            present |= 1 << i;
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            req.remove_header(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn upstream(yaml: &str) -> UpstreamConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn strip_headers_removes_every_value_of_the_names_present_only() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        req.append_header("Connection", "keep-alive").unwrap();
        req.append_header("connection", "upgrade").unwrap();
        req.append_header("X-Api-Key", "k").unwrap();
        req.append_header("content-type", "application/json")
            .unwrap();
        req.append_header("accept", "*/*").unwrap();
        let names = [
            http::header::CONNECTION,
            http::header::TRANSFER_ENCODING,
            HeaderName::from_static("x-api-key"),
        ];
        strip_headers(&mut req, &names);
        // (A removal reorders the map's entries; the order of the rest is not the point.)
        let mut left: Vec<_> = req
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [("accept", "*/*"), ("content-type", "application/json")]
        );
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap().to_ascii_lowercase();
        assert!(
            !wire.contains("connection") && !wire.contains("x-api-key"),
            "{wire}"
        );
        strip_headers(&mut req, &names);
        assert_eq!(req.headers.len(), 2);
    }

    #[test]
    fn swaps_client_auth_for_service_credential() {
        let up = upstream("hosts: ['127.0.0.1:1']\ncredential: 'Bearer svc'\n");
        let cred = UpstreamCredential::from_config("p", &up).unwrap();
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        req.insert_header("authorization", "Bearer client-key")
            .unwrap();
        req.insert_header("x-api-key", "client-key").unwrap();
        cred.apply(&mut req);
        assert_eq!(req.headers.get("authorization").unwrap(), "Bearer svc");
        assert!(req.headers.get("x-api-key").is_none());
        assert!(!format!("{cred:?}").contains("svc"));
    }

    #[test]
    fn custom_header_and_file_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "file-secret\n").unwrap();
        let mut up = upstream("hosts: ['127.0.0.1:1']\ncredential_header: x-api-key\n");
        up.credential_file = Some(path.to_string_lossy().into());
        let cred = UpstreamCredential::from_config("p", &up).unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("authorization", "Bearer client").unwrap();
        cred.apply(&mut req);
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(req.headers.get("x-api-key").unwrap(), "file-secret");

        up.credential_file = Some("/nonexistent/key".into());
        let e = UpstreamCredential::from_config("p", &up).unwrap_err().0;
        assert!(
            e.starts_with("upstreams.p.credential_file: cannot read"),
            "{e}"
        );
        up.credential_file = None;
        up.credential = Some(Secret("bad\nvalue".into()));
        let e = UpstreamCredential::from_config("p", &up).unwrap_err().0;
        assert!(!e.contains("bad"), "{e}");
    }
}
