//! The Anthropic Messages dialect: Claude Code and the Anthropic SDKs (`ANTHROPIC_BASE_URL`).

use bytes::Bytes;
use filters::Service;

use super::{Dialect, Endpoint, ErrorKind, Ingress, get_only, json_bytes, post_only};

/// The mount points of the Anthropic surface: `ANTHROPIC_BASE_URL` may end in any of them.
const PREFIXES: [&str; 4] = ["/api/claude", "/api", "/claude", ""];

/// `POST /v1/messages`, `/v1/messages/count_tokens`, `GET /v1/models`, `HEAD /` and `HEAD
/// /api/hello`, under every prefix; `GET /health` at the root.
pub struct AnthropicMessages;

impl Ingress for AnthropicMessages {
    fn dialect(&self) -> Dialect {
        Dialect::Anthropic
    }

    fn service(&self) -> Service {
        Service::Claude
    }

    fn route(&self, method: &http::Method, path: &str) -> Option<Endpoint> {
        for prefix in PREFIXES {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with('/')) {
                continue;
            }
            let endpoint = match rest {
                // `HEAD /` (older Claude Code) and `HEAD /api/hello` (its connection-warming
                // probe, sent at the base URL's origin or under its path).
                "" | "/" | "/api/hello" => probe(method),
                "/hello" if prefix.ends_with("/api") => probe(method),
                "/v1/messages" => post_only(method, Endpoint::Messages),
                "/v1/messages/count_tokens" => post_only(method, Endpoint::CountTokens),
                "/v1/models" => get_only(method, Endpoint::Models(super::Scope::Any)),
                "/v1/key/usage" => get_only(method, Endpoint::KeyUsage),
                "/health" if prefix.is_empty() => match *method {
                    http::Method::GET | http::Method::HEAD => Endpoint::Health,
                    _ => Endpoint::MethodNotAllowed("GET"),
                },
                _ => continue,
            };
            return Some(endpoint);
        }
        None
    }

    fn error_body(&self, kind: ErrorKind, _status: u16, message: &str) -> Bytes {
        json_bytes(&serde_json::json!({
            "type": "error",
            "error": { "type": error_type(kind), "message": message },
        }))
    }

    fn stream_error(&self, kind: ErrorKind, message: &str) -> Bytes {
        let payload = serde_json::json!({"type": "error", "error": {"type": error_type(kind), "message": message}});
        Bytes::from(format!("event: error\ndata: {payload}\n\n"))
    }

    /// Anthropic's list shape, each entry and the list also carrying OpenAI's fields: `GET
    /// /v1/models` is the same path for both SDKs, and each reads its own fields.
    fn models_list(&self, ids: &[String]) -> Bytes {
        let data: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| {
                let mut m = super::openai::model_object(id);
                if let Some(o) = m.as_object_mut() {
                    o.insert("type".into(), "model".into());
                    o.insert("display_name".into(), id.as_str().into());
                    o.insert("created_at".into(), "1970-01-01T00:00:00Z".into());
                }
                m
            })
            .collect();
        json_bytes(&serde_json::json!({
            "object": "list",
            "data": data,
            "has_more": false,
            "first_id": ids.first(),
            "last_id": ids.last(),
        }))
    }
}

/// Anthropic's word for an error kind.
pub fn error_type(k: ErrorKind) -> &'static str {
    match k {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::TooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Billing => "billing_error",
        ErrorKind::Unavailable => "overloaded_error",
        ErrorKind::Upstream | ErrorKind::Internal => "api_error",
    }
}

/// A connectivity probe: answered at once, without a key.
fn probe(method: &http::Method) -> Endpoint {
    match *method {
        http::Method::HEAD | http::Method::GET => Endpoint::Probe,
        _ => Endpoint::MethodNotAllowed("HEAD, GET"),
    }
}
