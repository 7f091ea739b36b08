//! The relay's error type and its rendering in the caller's dialect.
//!
//! Every refusal becomes one response: the right status, the dialect's JSON shape (Anthropic
//! `{"type":"error","error":{"type","message"}}`, OpenAI `{"error":{"message","type","code"}}`,
//! Gemini `{"error":{"code","message","status"}}`), `retry-after` where it helps, and
//! `x-relay-error-source` saying whether the relay or the upstream refused.

use bytes::Bytes;
use filters::{RejectKind, Rejection};
use pingora::http::ResponseHeader;

use crate::ingress::{self, Dialect, ErrorKind as Kind};

/// Who refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Relay,
    Upstream,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Relay => "relay",
            ErrorSource::Upstream => "upstream",
        }
    }
}

/// Errors the relay answers with. `reason()` is the low-cardinality metrics label.
#[derive(Debug, Clone)]
pub enum RelayError {
    Rejected(Rejection),
    BadRequest(String),
    NotFound(String),
    MethodNotAllowed(&'static str),
    PayloadTooLarge(usize),
    /// The request body's `content-encoding` is not one the relay decodes.
    UnsupportedMediaType(String),
    /// The client stopped sending its request body.
    RequestTimeout(String),
    /// The request has passed through this relay before (an account pointed at the relay).
    LoopDetected,
    /// Every account that serves the model is out of the pool (or busy); the seconds until the
    /// first of them returns, when one says so.
    NoAccount(String, Option<u64>),
    /// No account of the relay serves the model at all (for this dialect).
    UnknownModel(String),
    /// A WebSocket upgrade the relay does not offer.
    UpgradeRequired,
    /// The account's credential cannot be used now (an OAuth token that could not be refreshed).
    AccountCredential(String),
    UpstreamUnreachable(String),
    UpstreamTimeout(String),
    UpstreamProtocol(String),
    Internal(String),
}

impl RelayError {
    pub fn status(&self) -> u16 {
        match self {
            RelayError::Rejected(r) => r.status,
            RelayError::BadRequest(_) => 400,
            RelayError::NotFound(_) => 404,
            RelayError::MethodNotAllowed(_) => 405,
            RelayError::PayloadTooLarge(_) => 413,
            RelayError::UnsupportedMediaType(_) => 415,
            RelayError::RequestTimeout(_) => 408,
            RelayError::LoopDetected => 508,
            RelayError::NoAccount(..) | RelayError::AccountCredential(_) => 503,
            RelayError::UnknownModel(_) => 404,
            RelayError::UpgradeRequired => 426,
            RelayError::UpstreamUnreachable(_) | RelayError::UpstreamProtocol(_) => 502,
            RelayError::UpstreamTimeout(_) => 504,
            RelayError::Internal(_) => 500,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            RelayError::Rejected(r) => r.reason,
            RelayError::BadRequest(_) => "bad_request",
            RelayError::NotFound(_) => "not_found",
            RelayError::MethodNotAllowed(_) => "method_not_allowed",
            RelayError::PayloadTooLarge(_) => "body_too_large",
            RelayError::UnsupportedMediaType(_) => "unsupported_encoding",
            RelayError::RequestTimeout(_) => "request_timeout",
            RelayError::LoopDetected => "loop_detected",
            RelayError::NoAccount(..) => "no_account",
            RelayError::UnknownModel(_) => "unknown_model",
            RelayError::UpgradeRequired => "upgrade_refused",
            RelayError::AccountCredential(_) => "account_credential",
            RelayError::UpstreamUnreachable(_) => "upstream_unreachable",
            RelayError::UpstreamTimeout(_) => "upstream_timeout",
            RelayError::UpstreamProtocol(_) => "upstream_protocol",
            RelayError::Internal(_) => "internal",
        }
    }

    pub fn message(&self) -> String {
        match self {
            RelayError::Rejected(r) => r.message.clone(),
            RelayError::BadRequest(m)
            | RelayError::NotFound(m)
            | RelayError::Internal(m)
            | RelayError::UnsupportedMediaType(m)
            | RelayError::RequestTimeout(m) => m.clone(),
            RelayError::LoopDetected => {
                "The request has already passed through this relay: an upstream account points back at the relay".into()
            }
            RelayError::MethodNotAllowed(allowed) => format!("Method not allowed here; use {allowed}"),
            RelayError::PayloadTooLarge(limit) => {
                format!("Request body is larger than the relay's limit of {limit} bytes")
            }
            RelayError::NoAccount(model, _) => format!("No upstream account is available to serve model `{model}`"),
            RelayError::UnknownModel(model) => {
                format!("The model `{model}` does not exist here: no account of this relay serves it at this endpoint")
            }
            RelayError::UpgradeRequired => {
                "WebSocket is not offered on this path; send the request over HTTPS (POST)".into()
            }
            RelayError::AccountCredential(m) => format!("The upstream account cannot authenticate: {m}"),
            RelayError::UpstreamUnreachable(m) => format!("Upstream unreachable: {m}"),
            RelayError::UpstreamTimeout(m) => format!("Upstream timed out: {m}"),
            RelayError::UpstreamProtocol(m) => format!("Upstream answered badly: {m}"),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            RelayError::Rejected(r) => match r.kind {
                RejectKind::InvalidRequest => Kind::InvalidRequest,
                RejectKind::Authentication => Kind::Authentication,
                RejectKind::Permission => Kind::Permission,
                RejectKind::NotFound => Kind::NotFound,
                RejectKind::RateLimited => Kind::RateLimited,
                RejectKind::Billing => Kind::Billing,
            },
            RelayError::BadRequest(_)
            | RelayError::MethodNotAllowed(_)
            | RelayError::UnsupportedMediaType(_)
            | RelayError::RequestTimeout(_) => Kind::InvalidRequest,
            RelayError::LoopDetected => Kind::Internal,
            RelayError::NotFound(_) | RelayError::UnknownModel(_) => Kind::NotFound,
            RelayError::UpgradeRequired => Kind::InvalidRequest,
            RelayError::PayloadTooLarge(_) => Kind::TooLarge,
            RelayError::NoAccount(..) | RelayError::AccountCredential(_) => Kind::Unavailable,
            RelayError::UpstreamUnreachable(_) | RelayError::UpstreamProtocol(_) | RelayError::UpstreamTimeout(_) => {
                Kind::Upstream
            }
            RelayError::Internal(_) => Kind::Internal,
        }
    }

    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RelayError::Rejected(r) => r.retry_after,
            // When the first account returns (at least a second); else a guess.
            RelayError::NoAccount(_, back) => Some(back.map_or(30, |s| s.clamp(1, 3600))),
            _ => None,
        }
    }
}

/// The JSON body of an error in a dialect.
pub fn error_body(dialect: Dialect, err: &RelayError) -> Bytes {
    ingress::error_body(dialect, err.kind(), err.status(), &err.message())
}

/// The response head of an error.
pub fn error_head(err: &RelayError, body_len: usize, source: ErrorSource) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(err.status(), Some(4))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body_len.to_string())?;
    h.insert_header("x-relay-error-source", source.as_str())?;
    if let Some(s) = err.retry_after() {
        h.insert_header("retry-after", s.to_string())?;
    }
    if let RelayError::MethodNotAllowed(allowed) = err {
        h.insert_header(http::header::ALLOW, *allowed)?;
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_per_dialect() {
        let e = RelayError::PayloadTooLarge(10);
        let a: serde_json::Value = serde_json::from_slice(&error_body(Dialect::Anthropic, &e)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "request_too_large");
        let o: serde_json::Value = serde_json::from_slice(&error_body(Dialect::OpenAI, &e)).unwrap();
        assert_eq!(o["error"]["code"], "request_too_large");
        let g: serde_json::Value = serde_json::from_slice(&error_body(Dialect::Gemini, &e)).unwrap();
        assert_eq!(g["error"]["code"], 413);
        assert_eq!(g["error"]["status"], "INVALID_ARGUMENT");
        assert_eq!(RelayError::NoAccount("m".into(), None).status(), 503);
        assert_eq!(RelayError::NoAccount("m".into(), None).retry_after(), Some(30));
        assert_eq!(RelayError::NoAccount("m".into(), Some(0)).retry_after(), Some(1));
        assert_eq!(RelayError::NoAccount("m".into(), Some(3)).retry_after(), Some(3));
        assert_eq!(RelayError::UpstreamTimeout("x".into()).status(), 504);
        let h = error_head(&RelayError::MethodNotAllowed("HEAD, GET"), 0, ErrorSource::Relay).unwrap();
        assert_eq!(h.headers.get("allow").unwrap(), "HEAD, GET");
    }
}
