//! Client dialects: how a client's request is recognised and how answers made by the relay
//! (errors, model lists, a stream's error event) are shaped for it.
//!
//! Each dialect the relay serves has an [`Ingress`]: a static implementation from a closed set
//! ([`ingresses`]), asked in order by [`classify`] which of them a request path belongs to. Today:
//! [`anthropic::AnthropicMessages`] (Claude Code and the Anthropic SDKs) and [`openai::OpenAi`]
//! (Chat Completions and Responses). The Gemini error shape is here already, because a refusal
//! made before a route is known (a malformed request head) must still reach those clients in a
//! shape they read.

pub mod anthropic;
pub mod openai;

use bytes::Bytes;
use filters::{RouteInfo, Service};

/// The error shape a caller understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    OpenAI,
    Gemini,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
    /// `GET /v1/models`: the models the key may use.
    Models(Scope),
    /// `GET /v1/models/{id}` (OpenAI).
    ModelInfo(Scope),
    /// `POST /v1/chat/completions` (OpenAI Chat Completions).
    ChatCompletions(Scope),
    /// `POST /v1/responses` (OpenAI Responses).
    Responses,
    /// `POST /v1/responses/compact`.
    ResponsesCompact,
    /// `GET /v1/responses` with a WebSocket upgrade: refused at once (426).
    Upgrade,
    /// `HEAD /` or `GET /`: a connectivity probe, answered at once.
    Probe,
    /// `GET /health`
    Health,
    /// Known path, wrong method.
    MethodNotAllowed(&'static str),
    NotFound,
}

impl Endpoint {
    /// Stable name for metrics and filters.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models(_) => "models",
            Endpoint::ModelInfo(_) => "model_info",
            Endpoint::ChatCompletions(_) => "chat_completions",
            Endpoint::Responses => "responses",
            Endpoint::ResponsesCompact => "responses_compact",
            Endpoint::Upgrade => "websocket",
            Endpoint::Probe => "probe",
            Endpoint::Health => "health",
            Endpoint::MethodNotAllowed(_) => "method_not_allowed",
            Endpoint::NotFound => "not_found",
        }
    }

    /// Whether the endpoint carries a body to relay upstream.
    pub fn is_relayed(self) -> bool {
        matches!(
            self,
            Endpoint::Messages
                | Endpoint::CountTokens
                | Endpoint::ChatCompletions(_)
                | Endpoint::Responses
                | Endpoint::ResponsesCompact
        )
    }

    /// Whether the endpoint's answers carry usage to bill (counting tokens is free).
    pub fn is_billed(self) -> bool {
        self.is_relayed() && self != Endpoint::CountTokens
    }

    /// Which models the endpoint's mount point serves.
    pub fn scope(self) -> Scope {
        match self {
            Endpoint::Models(s) | Endpoint::ModelInfo(s) | Endpoint::ChatCompletions(s) => s,
            _ => Scope::Any,
        }
    }
}

/// Which models a mount point serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Any,
    /// `/openai/claude/…`: Claude models only.
    Claude,
}

#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub endpoint: Endpoint,
    pub dialect: Dialect,
    pub service: Service,
}

impl Route {
    pub fn info(&self) -> RouteInfo {
        RouteInfo {
            service: self.service,
            endpoint: self.endpoint.name(),
        }
    }
}

/// What kind of refusal an error is, whatever the dialect's words for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    TooLarge,
    RateLimited,
    Billing,
    Unavailable,
    Upstream,
    Internal,
}

/// One client dialect.
pub trait Ingress: Sync {
    fn dialect(&self) -> Dialect;

    /// The endpoint `method` and `path` name in this dialect, `None` when the path is not one of
    /// its paths.
    fn route(&self, method: &http::Method, path: &str) -> Option<Endpoint>;

    /// The service the dialect's requests count under in key permissions.
    fn service(&self) -> Service;

    /// The JSON body of an error in this dialect.
    fn error_body(&self, kind: ErrorKind, status: u16, message: &str) -> Bytes;

    /// The event that ends a committed stream the upstream broke.
    fn stream_error(&self, kind: ErrorKind, message: &str) -> Bytes;

    /// The model list in this dialect's shape.
    fn models_list(&self, ids: &[String]) -> Bytes;
}

/// The ingresses, in the order paths are matched.
pub fn ingresses() -> [&'static dyn Ingress; 2] {
    [&anthropic::AnthropicMessages, &openai::OpenAi]
}

/// The ingress of a dialect the relay serves.
pub fn for_dialect(dialect: Dialect) -> Option<&'static dyn Ingress> {
    ingresses().into_iter().find(|i| i.dialect() == dialect)
}

/// Which dialect and endpoint a request is for. A path no ingress knows is `NotFound` in the
/// Anthropic dialect.
pub fn classify(method: &http::Method, path: &str) -> Route {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    for ingress in ingresses() {
        if let Some(endpoint) = ingress.route(method, path) {
            // A mount point for Claude models counts under the Claude service.
            let service = match endpoint.scope() {
                Scope::Claude => Service::Claude,
                Scope::Any => ingress.service(),
            };
            return Route {
                endpoint,
                dialect: ingress.dialect(),
                service,
            };
        }
    }
    // An unknown path under the OpenAI mount point is answered in OpenAI's shape.
    let openai = path == "/openai" || path.starts_with("/openai/");
    Route {
        endpoint: Endpoint::NotFound,
        dialect: if openai { Dialect::OpenAI } else { Dialect::Anthropic },
        service: if openai { Service::OpenAI } else { Service::Claude },
    }
}

/// The JSON body of an error in `dialect`.
pub fn error_body(dialect: Dialect, kind: ErrorKind, status: u16, message: &str) -> Bytes {
    match dialect {
        Dialect::Anthropic => anthropic::AnthropicMessages.error_body(kind, status, message),
        Dialect::OpenAI => openai::openai_error(kind, message),
        Dialect::Gemini => gemini_error(kind, status, message),
    }
}

/// Google's `{"error":{"code","message","status"}}`.
fn gemini_error(kind: ErrorKind, status: u16, message: &str) -> Bytes {
    let s = match kind {
        ErrorKind::InvalidRequest | ErrorKind::TooLarge => "INVALID_ARGUMENT",
        ErrorKind::Authentication => "UNAUTHENTICATED",
        ErrorKind::Permission => "PERMISSION_DENIED",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::RateLimited | ErrorKind::Billing => "RESOURCE_EXHAUSTED",
        ErrorKind::Unavailable | ErrorKind::Upstream => "UNAVAILABLE",
        ErrorKind::Internal => "INTERNAL",
    };
    json_bytes(&serde_json::json!({ "error": { "code": status, "message": message, "status": s } }))
}

/// `e` for a POST, else the 405 that names POST.
fn post_only(method: &http::Method, e: Endpoint) -> Endpoint {
    only(method, http::Method::POST, "POST", e)
}

/// `e` for a GET, else the 405 that names GET.
fn get_only(method: &http::Method, e: Endpoint) -> Endpoint {
    only(method, http::Method::GET, "GET", e)
}

fn only(method: &http::Method, allowed: http::Method, name: &'static str, e: Endpoint) -> Endpoint {
    if *method == allowed {
        e
    } else {
        Endpoint::MethodNotAllowed(name)
    }
}

fn json_bytes(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes_under_every_prefix() {
        for p in ["", "/api", "/claude", "/api/claude"] {
            assert_eq!(
                classify(&Method::POST, &format!("{p}/v1/messages")).endpoint,
                Endpoint::Messages,
                "{p}"
            );
            assert_eq!(
                classify(&Method::POST, &format!("{p}/v1/messages/count_tokens")).endpoint,
                Endpoint::CountTokens
            );
            assert_eq!(
                classify(&Method::GET, &format!("{p}/v1/models")).endpoint,
                Endpoint::Models(Scope::Any)
            );
            assert_eq!(classify(&Method::HEAD, &format!("{p}/")).endpoint, Endpoint::Probe);
        }
        assert_eq!(classify(&Method::HEAD, "/api").endpoint, Endpoint::Probe);
        assert_eq!(classify(&Method::GET, "/health").endpoint, Endpoint::Health);
        assert_eq!(
            classify(&Method::GET, "/v1/messages").endpoint,
            Endpoint::MethodNotAllowed("POST")
        );
        assert_eq!(classify(&Method::POST, "/v2/other").endpoint, Endpoint::NotFound);
        let r = classify(&Method::POST, "/openai/v1/embeddings");
        assert_eq!((r.endpoint, r.dialect), (Endpoint::NotFound, Dialect::OpenAI));
        assert_eq!(
            classify(&Method::POST, "/apix/v1/messages").endpoint,
            Endpoint::NotFound
        );
        assert_eq!(
            classify(&Method::POST, "/api/v1/messages/").endpoint,
            Endpoint::Messages
        );
    }
}
