//! The OpenAI dialects: Chat Completions (the OpenAI SDKs and every OpenAI-compatible tool) and
//! Responses (Codex CLI, the SDKs' `responses` calls).
//!
//! Mount points: `/openai/v1/…` and `/openai/…` (`base_url` ending in `/openai/v1` or
//! `/openai`), `/api/v1/…`, `/v1/…`; `/openai/claude/v1/chat/completions` serves Claude models
//! only. A WebSocket upgrade on the Responses path is refused at once with 426, which makes Codex
//! fall back to HTTPS without waiting. `/openai/gemini/v1/chat/completions` serves Gemini models
//! only.

use bytes::Bytes;
use filters::Service;

use super::{Dialect, Endpoint, ErrorKind, Ingress, Scope, get_only, json_bytes, post_only};

/// Prefixes under which the OpenAI paths are served, longest first.
const PREFIXES: [(&str, Scope); 8] = [
    ("/openai/claude/v1", Scope::Claude),
    ("/openai/claude", Scope::Claude),
    ("/openai/gemini/v1", Scope::Gemini),
    ("/openai/gemini", Scope::Gemini),
    ("/openai/v1", Scope::Any),
    ("/openai", Scope::Any),
    ("/api/v1", Scope::Any),
    ("/v1", Scope::Any),
];

pub struct OpenAi;

impl Ingress for OpenAi {
    fn dialect(&self) -> Dialect {
        Dialect::OpenAI
    }

    fn service(&self) -> Service {
        Service::OpenAI
    }

    fn route(&self, method: &http::Method, path: &str) -> Option<Endpoint> {
        for (prefix, scope) in PREFIXES {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            let endpoint = match rest {
                "/chat/completions" => post_only(method, Endpoint::ChatCompletions(scope)),
                "/responses" | "/responses/compact" if scope != Scope::Any => return None,
                "/responses" if *method == http::Method::GET => Endpoint::Upgrade,
                "/responses" => post_only(method, Endpoint::Responses),
                "/responses/compact" => post_only(method, Endpoint::ResponsesCompact),
                // `/v1/models` itself belongs to the Anthropic surface, which answers in a shape
                // both SDKs read.
                "/models" if prefix.starts_with("/openai") => get_only(method, Endpoint::Models(scope)),
                // `/v1/models/{model}:generateContent` is the Gemini API's.
                r if r.starts_with("/models/") && r.len() > "/models/".len() && !r.contains(':') => {
                    get_only(method, Endpoint::ModelInfo(scope))
                }
                _ => continue,
            };
            return Some(endpoint);
        }
        None
    }

    fn error_body(&self, kind: ErrorKind, _status: u16, message: &str) -> Bytes {
        openai_error(kind, message)
    }

    fn stream_error(&self, kind: ErrorKind, message: &str) -> Bytes {
        let body = openai_error(kind, message);
        let mut out = Vec::with_capacity(body.len() + 24);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        Bytes::from(out)
    }

    fn models_list(&self, ids: &[String]) -> Bytes {
        let data: Vec<serde_json::Value> = ids.iter().map(|id| model_object(id)).collect();
        json_bytes(&serde_json::json!({ "object": "list", "data": data }))
    }
}

/// The event that ends a committed Responses stream the upstream broke: Responses' own `error`
/// event, which Codex reports as the stream's failure.
pub fn responses_stream_error(message: &str) -> Bytes {
    let payload = serde_json::json!({"type": "error", "code": "upstream_error", "message": message, "param": null});
    Bytes::from(format!("event: error\ndata: {payload}\n\n"))
}

/// One model in OpenAI's shape.
pub fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": owner(id) })
}

fn owner(id: &str) -> &'static str {
    match crate::providers::Family::of(id) {
        Some(crate::providers::Family::Claude) => "anthropic",
        Some(crate::providers::Family::OpenAi) => "openai",
        Some(crate::providers::Family::Gemini) => "google",
        None => "relay",
    }
}

/// OpenAI's `{"error":{"message","type","code"}}`.
pub fn openai_error(kind: ErrorKind, message: &str) -> Bytes {
    let (t, code) = match kind {
        ErrorKind::InvalidRequest => ("invalid_request_error", "invalid_request"),
        ErrorKind::Authentication => ("authentication_error", "invalid_api_key"),
        ErrorKind::Permission => ("permission_error", "permission_denied"),
        ErrorKind::NotFound => ("invalid_request_error", "not_found"),
        ErrorKind::TooLarge => ("invalid_request_error", "request_too_large"),
        ErrorKind::RateLimited => ("rate_limit_error", "rate_limit_exceeded"),
        ErrorKind::Billing => ("insufficient_quota", "insufficient_quota"),
        ErrorKind::Unavailable => ("server_error", "no_upstream_available"),
        ErrorKind::Upstream => ("server_error", "upstream_error"),
        ErrorKind::Internal => ("server_error", "internal_error"),
    };
    json_bytes(&serde_json::json!({ "error": { "message": message, "type": t, "code": code, "param": null } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes_every_mount_point() {
        let r = |m: &Method, p: &str| OpenAi.route(m, p);
        for p in ["/openai/v1", "/openai", "/api/v1", "/v1"] {
            assert_eq!(
                r(&Method::POST, &format!("{p}/chat/completions")),
                Some(Endpoint::ChatCompletions(Scope::Any)),
                "{p}"
            );
            assert_eq!(r(&Method::POST, &format!("{p}/responses")), Some(Endpoint::Responses));
            assert_eq!(
                r(&Method::POST, &format!("{p}/responses/compact")),
                Some(Endpoint::ResponsesCompact)
            );
            assert_eq!(r(&Method::GET, &format!("{p}/responses")), Some(Endpoint::Upgrade));
            assert_eq!(
                r(&Method::GET, &format!("{p}/models/gpt-5")),
                Some(Endpoint::ModelInfo(Scope::Any))
            );
        }
        assert_eq!(
            r(&Method::POST, "/openai/claude/v1/chat/completions"),
            Some(Endpoint::ChatCompletions(Scope::Claude))
        );
        assert_eq!(r(&Method::POST, "/openai/claude/v1/responses"), None);
        assert_eq!(r(&Method::GET, "/openai/v1/models"), Some(Endpoint::Models(Scope::Any)));
        assert_eq!(r(&Method::GET, "/v1/models"), None);
        assert_eq!(
            r(&Method::GET, "/v1/chat/completions"),
            Some(Endpoint::MethodNotAllowed("POST"))
        );
        assert_eq!(r(&Method::POST, "/v1/messages"), None);
    }

    #[test]
    fn stream_errors_end_the_stream() {
        let b = OpenAi.stream_error(ErrorKind::Upstream, "broke");
        let s = std::str::from_utf8(&b).unwrap();
        assert!(s.starts_with("data: {\"error\":"));
        assert!(s.ends_with("data: [DONE]\n\n"));
    }
}
