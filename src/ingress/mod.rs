//! Client dialects: how a client's request is recognised and how answers made by the relay
//! (errors, model lists, a stream's error event) are shaped for it.
//!
//! Each dialect the relay serves has an [`Ingress`]: a static implementation from a closed set
//! ([`ingresses`]), asked in order by [`classify`] which of them a request path belongs to. Today:
//! [`anthropic::AnthropicMessages`] (Claude Code and the Anthropic SDKs), [`openai::OpenAi`]
//! (Chat Completions and Responses) and [`gemini::Gemini`] (the Gemini API and Code Assist).

pub mod anthropic;
pub mod gemini;
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
    /// `POST …/models/{model}:generateContent` or `:streamGenerateContent` (the Gemini API).
    GeminiGenerate {
        stream: bool,
    },
    /// `POST …/models/{model}:countTokens`.
    GeminiCountTokens,
    /// `POST /v1internal:generateContent` or `:streamGenerateContent` (Code Assist).
    CodeAssistGenerate {
        stream: bool,
    },
    /// `POST /v1internal:countTokens`.
    CodeAssistCountTokens,
    /// A Code Assist call about the user and its project, answered by the relay.
    CodeAssistSetup(gemini::Setup),
    /// `HEAD /` or `GET /`: a connectivity probe, answered at once.
    Probe,
    /// `GET /health`
    Health,
    /// `GET /v1/key/usage` (also under `/api`): the calling key's own usage, answered by the relay.
    KeyUsage,
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
            Endpoint::GeminiGenerate { stream: false } => "generate_content",
            Endpoint::GeminiGenerate { stream: true } => "stream_generate_content",
            Endpoint::GeminiCountTokens => "gemini_count_tokens",
            Endpoint::CodeAssistGenerate { stream: false } => "code_assist_generate",
            Endpoint::CodeAssistGenerate { stream: true } => "code_assist_stream_generate",
            Endpoint::CodeAssistCountTokens => "code_assist_count_tokens",
            Endpoint::CodeAssistSetup(_) => "code_assist_setup",
            Endpoint::Probe => "probe",
            Endpoint::Health => "health",
            Endpoint::KeyUsage => "key_usage",
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
                | Endpoint::GeminiGenerate { .. }
                | Endpoint::GeminiCountTokens
                | Endpoint::CodeAssistGenerate { .. }
                | Endpoint::CodeAssistCountTokens
        )
    }

    /// Whether the endpoint's answers carry usage to bill (counting tokens is free).
    pub fn is_billed(self) -> bool {
        self.is_relayed()
            && !matches!(
                self,
                Endpoint::CountTokens | Endpoint::GeminiCountTokens | Endpoint::CodeAssistCountTokens
            )
    }

    /// Whether the client asked for a stream in the endpoint itself (Gemini names it in the
    /// method) rather than in the body.
    pub fn streams_by_path(self) -> Option<bool> {
        match self {
            Endpoint::GeminiGenerate { stream } | Endpoint::CodeAssistGenerate { stream } => Some(stream),
            Endpoint::GeminiCountTokens | Endpoint::CodeAssistCountTokens => Some(false),
            _ => None,
        }
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
    /// `/openai/gemini/…`: Gemini models only.
    Gemini,
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

    /// One model in this dialect's shape (OpenAI's unless the dialect has its own).
    fn model_info(&self, id: &str) -> Bytes {
        json_bytes(&openai::model_object(id))
    }
}

/// The ingresses, in the order paths are matched.
pub fn ingresses() -> [&'static dyn Ingress; 3] {
    [&anthropic::AnthropicMessages, &openai::OpenAi, &gemini::Gemini]
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
                Scope::Gemini => Service::Gemini,
                Scope::Any => ingress.service(),
            };
            return Route {
                endpoint,
                dialect: ingress.dialect(),
                service,
            };
        }
    }
    // An unknown path under the OpenAI or Gemini mount points is answered in their shape.
    let under = |p: &str| path == p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/'));
    let (dialect, service) = if under("/openai") {
        (Dialect::OpenAI, Service::OpenAI)
    } else if under("/gemini") || under("/v1beta") || path.starts_with("/v1internal") {
        (Dialect::Gemini, Service::Gemini)
    } else {
        (Dialect::Anthropic, Service::Claude)
    };
    Route {
        endpoint: Endpoint::NotFound,
        dialect,
        service,
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
pub fn gemini_error(kind: ErrorKind, status: u16, message: &str) -> Bytes {
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

/// A path segment (a model id) percent-decoded.
pub fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
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
        assert_eq!(classify(&Method::HEAD, "/api/hello").endpoint, Endpoint::Probe);
        assert_eq!(classify(&Method::HEAD, "/claude/api/hello").endpoint, Endpoint::Probe);
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
