//! Upstream providers: how each account kind is addressed, authenticated and understood.
//!
//! Every account kind has a [`Provider`]: a static implementation chosen by [`provider`] from a
//! closed set. The dispatch loop asks it, on every attempt, to [`Provider::prepare`] the upstream
//! request (path, credentials, body; signing last), and reads the answer through it
//! ([`Provider::effective_status`], [`Provider::observe`], [`Provider::stream_failure`]). What
//! the answer needs to reach the client in its own dialect is named by the [`ResponseKind`] the
//! provider returns; the translators themselves live in `convert`.
//!
//! - [`anthropic`] (shared), [`anthropic_console`], [`anthropic_oauth`], [`ccr`]: the Anthropic
//!   Messages wire.
//! - [`bedrock`]: AWS Bedrock `invoke` with SigV4 (or a Bedrock API key) and the AWS event-stream.
//! - [`openai`]: OpenAI Chat Completions and Responses (`openai`, `azure-openai`) and ChatGPT's
//!   Codex backend (`openai-oauth`); [`openai_oauth`]: the sign-in and tokens of the latter.
//! - [`gemini`]: the Gemini API (`gemini-api`) and Gemini Code Assist (`gemini-oauth`).
//! - [`request`]: the client headers every provider starts from.

pub mod anthropic;
pub mod anthropic_console;
pub mod anthropic_oauth;
pub mod anthropic_passthrough;
pub mod bedrock;
pub mod ccr;
pub mod gemini;
pub mod gemini_oauth;
pub mod openai;
pub mod openai_oauth;
pub mod request;

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderName;
use pingora::http::RequestHeader;

use crate::store::AccountKind;

use http::HeaderValue;

/// A parsed upstream base URL: `https://api.anthropic.com`, `http://127.0.0.1:8080/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (empty for none).
    pub path_prefix: String,
    /// The `Host` header value: the host, with the port when it is not the scheme's default.
    pub host_header: HeaderValue,
}

impl UpstreamBase {
    pub fn parse(s: &str) -> Result<UpstreamBase, String> {
        let u = url::Url::parse(s.trim()).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        let tls = match u.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme `{other}` is not supported (use https or http)")),
        };
        if u.query().is_some() || u.fragment().is_some() {
            return Err(format!("`{s}` must not have a query or fragment"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(format!("`{s}` must not carry credentials"));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(format!("`{s}` has no host")),
        };
        let port = u.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let host_part = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let host_header = if u.port().is_some() {
            format!("{host_part}:{port}")
        } else {
            host_part
        };
        let host_header = HeaderValue::from_str(&host_header).map_err(|_| format!("`{s}` has an invalid host"))?;
        let path_prefix = u.path().trim_end_matches('/').to_string();
        Ok(UpstreamBase {
            tls,
            host,
            port,
            path_prefix,
            host_header,
        })
    }

    /// The whole URL of `path` (after the path prefix), for calls the relay makes itself.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = self.host_header.to_str().unwrap_or_default();
        format!("{scheme}://{host}{}", self.path_and_query(path, None))
    }

    /// The upstream path for a relay path such as `/v1/messages`, with the query appended.
    pub fn path_and_query(&self, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.path_prefix.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        out.push_str(&self.path_prefix);
        out.push_str(path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// A value put into an upstream path or query (a model, a deployment, an API version),
/// percent-encoded.
pub(crate) fn encode_component(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Anthropic Messages (`/v1/messages`, SSE streams): Console, OAuth and CCR accounts.
    AnthropicMessages,
    /// AWS Bedrock `InvokeModel` with the AWS event-stream.
    Bedrock,
    /// OpenAI Chat Completions and Responses (the OpenAI API, compatible servers, Azure OpenAI).
    OpenAi,
    /// ChatGPT's Codex backend: Responses only.
    CodexResponses,
    /// The Gemini API: `/{version}/models/{model}:generateContent` and friends, model in the path.
    GeminiApi,
    /// Gemini Code Assist: `/v1internal:generateContent` and friends, the Gemini request wrapped in
    /// `{model, project, user_prompt_id, request}`, the answer in `{"response": …}`.
    CodeAssist,
}

/// What a relayed request asks the upstream for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A Messages request, streamed or not.
    Messages,
    /// Counting the tokens of a Messages request.
    CountTokens,
    /// An OpenAI Chat Completions request.
    Chat,
    /// An OpenAI Responses request.
    Responses,
    /// Compacting a Responses conversation (`/responses/compact`).
    ResponsesCompact,
    /// A Gemini API `generateContent` (or `streamGenerateContent`) request: the model in the path.
    GeminiGenerate,
    /// A Gemini API `countTokens` request.
    GeminiCountTokens,
    /// A Code Assist `generateContent` (or `streamGenerateContent`): the request wrapped with
    /// its model and project.
    CodeAssistGenerate,
    /// A Code Assist `countTokens`: `{"request": {"model": "models/…", "contents": …}}`.
    CodeAssistCountTokens,
}

impl Operation {
    /// Whether the operation counts tokens (free, not billed).
    pub fn counts_tokens(self) -> bool {
        matches!(
            self,
            Operation::CountTokens | Operation::GeminiCountTokens | Operation::CodeAssistCountTokens
        )
    }
}

/// An account's credential, opened and ready for the hot path: one variant per way of
/// authenticating.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A fixed header: a Console API key (`x-api-key`) or a compatible gateway's bearer key.
    Header(HeaderName, http::HeaderValue),
    /// A Claude subscription's refreshing OAuth token; the header is read from the cell at each
    /// attempt.
    OAuth(Arc<crate::credentials::TokenCell>),
    /// AWS credentials (SigV4) or a Bedrock API key.
    Bedrock(Arc<bedrock::BedrockAuth>),
    /// An Azure OpenAI key (`api-key`) with the account's deployments.
    Azure(Arc<openai::AzureTarget>, HeaderName, http::HeaderValue),
    /// A ChatGPT subscription's refreshing token and the ChatGPT account id the Codex backend
    /// wants in `chatgpt-account-id`.
    OpenAiOAuth(Arc<crate::credentials::TokenCell>, Option<http::HeaderValue>),
    /// A Google account's refreshing token for Code Assist, and the project its requests go to.
    GoogleOAuth(Arc<crate::credentials::TokenCell>, Arc<gemini::Project>),
    /// None of its own: the client's credentials are forwarded (`claude-passthrough`).
    None,
}

/// The request as the client sent it, with what the relay decided about it.
pub struct Call<'a> {
    pub op: Operation,
    pub client: &'a RequestHeader,
    /// The client's query, without a relay key.
    pub query: Option<&'a str>,
    /// The client's body (an Anthropic Messages request) with the upstream model in place.
    pub body: &'a Bytes,
    /// The model after the account's `model_map` (and the CCR prefix) applied.
    pub upstream_model: &'a str,
    pub stream: bool,
}

/// The account an attempt goes to.
pub struct Target<'a> {
    pub base: &'a UpstreamBase,
    pub credential: &'a Credential,
    /// The live bearer header of an OAuth account, read (and refreshed when due) for this attempt.
    pub live: Option<&'a http::HeaderValue>,
    /// The Code Assist project of a `gemini-oauth` account, resolved for this attempt.
    pub project: Option<&'a str>,
}

/// Process-wide settings the providers read.
pub struct ProviderEnv {
    /// The beta flag merged into `anthropic-beta` for OAuth accounts.
    pub oauth_beta: String,
    /// Anthropic model names → Bedrock model ids, from the price table.
    pub bedrock_models: bedrock::models::Catalog,
}

/// How the answer must be read and turned into the client's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    /// Anthropic Messages: SSE or JSON, passed through.
    Anthropic,
    /// Bedrock `invoke`: Anthropic JSON; errors in AWS's shape.
    BedrockInvoke,
    /// Bedrock `invoke-with-response-stream`: an AWS event-stream of Anthropic events.
    BedrockStream,
    /// Bedrock `CountTokens`: `{"inputTokens": n}`.
    BedrockCountTokens,
    /// OpenAI Chat Completions: SSE chunks or a `chat.completion` JSON.
    OpenAiChat,
    /// OpenAI Responses: SSE events or a response JSON.
    OpenAiResponses,
    /// The Gemini API: SSE (`alt=sse`) of `GenerateContentResponse`s, or one as JSON; errors in
    /// Google's shape.
    Gemini,
    /// Code Assist: like [`ResponseKind::Gemini`], each answer wrapped in `{"response": …}`.
    CodeAssist,
    /// `countTokens` of either Google wire: `{"totalTokens": n}`, the same on both.
    GeminiCount,
}

/// An upstream request ready to send.
pub struct Prepared {
    pub head: RequestHeader,
    pub body: Bytes,
    pub response: ResponseKind,
    /// The model the upstream is asked for, when the provider chose another name than
    /// [`Call::upstream_model`] (a Bedrock model id): what the usage is priced by.
    pub wire_model: Option<String>,
}

/// Why an attempt could not be prepared.
#[derive(Debug)]
pub enum PrepareError {
    /// The account cannot be used now (a credential it cannot present): the account is skipped
    /// for this request and another tried.
    Account(String),
    /// The request cannot be sent in this wire's terms (e.g. a malformed `anthropic_beta`): the
    /// client's problem, answered at once.
    Request(String),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Account(m) | PrepareError::Request(m) => f.write_str(m),
        }
    }
}

impl From<Box<pingora::Error>> for PrepareError {
    fn from(e: Box<pingora::Error>) -> Self {
        PrepareError::Account(format!("building the upstream request: {e}"))
    }
}

/// One upstream family: how a request is sent to an account of its kind, and how its answers
/// are understood.
pub trait Provider: Sync {
    fn wire(&self) -> Wire;

    /// Builds the upstream request for one attempt on one account: path, credentials, body;
    /// a signature, when the wire needs one, is computed last (and anew on every attempt).
    fn prepare(&self, env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError>;

    /// The status that classifies an answer: the HTTP status, or the one an error type in the
    /// answer's headers stands for when the upstream's statuses are coarser than its errors.
    fn effective_status(&self, status: u16, _headers: &http::HeaderMap) -> u16 {
        status
    }

    /// What the answer's head says about the account's rate limits, to keep with the account.
    fn observe(&self, _headers: &http::HeaderMap, _now_s: i64) -> Option<anthropic::UnifiedLimits> {
        None
    }

    /// The status that a failure met inside a committed stream stands for (a Bedrock exception
    /// frame): `None` when it says nothing about the account.
    fn stream_failure(&self, _kind: &str) -> Option<u16> {
        None
    }

    /// Whether the upstream is called with the client's own credentials: then what it answers is
    /// about the client, never about the account.
    fn forwards_client_credentials(&self) -> bool {
        false
    }
}

/// The provider of an account kind.
pub fn provider(kind: AccountKind) -> &'static dyn Provider {
    match kind {
        AccountKind::ClaudeConsole => &anthropic_console::Console,
        AccountKind::ClaudeOauth => &anthropic_oauth::OAuth,
        AccountKind::Ccr => &ccr::Ccr,
        AccountKind::Bedrock => &bedrock::Bedrock,
        AccountKind::OpenAi => &openai::OpenAi,
        AccountKind::AzureOpenAi => &openai::Azure,
        AccountKind::OpenAiOauth => &openai::CodexOAuth,
        AccountKind::GeminiApi => &gemini::GeminiApi,
        AccountKind::GeminiOauth => &gemini::CodeAssist,
        AccountKind::ClaudePassthrough => &anthropic_passthrough::Passthrough,
    }
}

/// Whose models a model name is, by the vendors' naming rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `claude-*`, and Bedrock's Anthropic model ids and ARNs.
    Claude,
    /// `gpt-*`, `chatgpt-*`, `codex-*`, `o1`, `o3-mini`, `o4-mini`, …
    OpenAi,
    /// `gemini-*`, `gemma-*`.
    Gemini,
}

impl Family {
    /// The family a model name belongs to; `None` for a name no rule knows (a compatible
    /// server's own models).
    pub fn of(model: &str) -> Option<Family> {
        let m = model.trim();
        let m = m.rsplit_once('/').map_or(m, |(_, tail)| tail);
        let lower = |p: &str| m.len() >= p.len() && m[..p.len()].eq_ignore_ascii_case(p);
        if lower("claude") || m.contains("anthropic.claude") || model.starts_with("arn:aws:bedrock") {
            return Some(Family::Claude);
        }
        if lower("gpt-") || lower("chatgpt-") || lower("codex-") || lower("ft:gpt") || lower("computer-use") {
            return Some(Family::OpenAi);
        }
        let b = m.as_bytes();
        if b.len() >= 2 && (b[0] == b'o' || b[0] == b'O') && b[1].is_ascii_digit() {
            return Some(Family::OpenAi);
        }
        if lower("gemini-") || lower("gemma-") {
            return Some(Family::Gemini);
        }
        None
    }
}

/// Whether an account of `kind` serves a model of `family` (`None`: a name no rule knows) when
/// its `models` does not list its models: Claude kinds serve Claude models and names of no known
/// family (Anthropic-compatible gateways host other vendors' models under their own names); the
/// OpenAI kinds serve OpenAI models; the Gemini kinds Gemini models.
pub fn default_family(kind: AccountKind, family: Option<Family>) -> bool {
    match kind {
        AccountKind::ClaudeConsole
        | AccountKind::ClaudeOauth
        | AccountKind::Bedrock
        | AccountKind::Ccr
        | AccountKind::ClaudePassthrough => {
            matches!(family, None | Some(Family::Claude))
        }
        AccountKind::OpenAi | AccountKind::AzureOpenAi | AccountKind::OpenAiOauth => family == Some(Family::OpenAi),
        AccountKind::GeminiApi | AccountKind::GeminiOauth => family == Some(Family::Gemini),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_naming_rule() {
        use Family::*;
        for (m, f) in [
            ("claude-sonnet-4-5", Some(Claude)),
            ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", Some(Claude)),
            ("arn:aws:bedrock:us-east-1:1:inference-profile/x", Some(Claude)),
            ("gpt-5", Some(OpenAi)),
            ("gpt-5-codex", Some(OpenAi)),
            ("o3-mini", Some(OpenAi)),
            ("o1", Some(OpenAi)),
            ("codex-mini-latest", Some(OpenAi)),
            ("openai/gpt-4.1", Some(OpenAi)),
            ("gemini-2.5-pro", Some(Gemini)),
            ("glm-4.6", None),
            ("omni-moderation", None),
            ("ccr,x", None),
        ] {
            assert_eq!(Family::of(m), f, "{m}");
        }
        assert!(default_family(AccountKind::ClaudeConsole, None));
        assert!(!default_family(AccountKind::ClaudeConsole, Some(OpenAi)));
        assert!(default_family(AccountKind::AzureOpenAi, Some(OpenAi)));
        assert!(!default_family(AccountKind::OpenAi, None));
        assert!(!default_family(AccountKind::OpenAiOauth, Some(Gemini)));
    }

    #[test]
    fn parses_bases() {
        let b = UpstreamBase::parse("https://api.anthropic.com").unwrap();
        assert_eq!(
            (b.tls, b.host.as_str(), b.port, b.path_prefix.as_str()),
            (true, "api.anthropic.com", 443, "")
        );
        assert_eq!(b.host_header, "api.anthropic.com");
        let b = UpstreamBase::parse("http://127.0.0.1:8080/proxy/").unwrap();
        assert_eq!((b.tls, b.port, b.path_prefix.as_str()), (false, 8080, "/proxy"));
        assert_eq!(b.host_header, "127.0.0.1:8080");
        assert_eq!(
            b.path_and_query("/v1/messages", Some("beta=true")),
            "/proxy/v1/messages?beta=true"
        );
        assert_eq!(b.url("/v1internal:x"), "http://127.0.0.1:8080/proxy/v1internal:x");
        let b = UpstreamBase::parse("https://[::1]/").unwrap();
        assert_eq!(b.url("/v1"), "https://[::1]/v1");
        assert!(UpstreamBase::parse("ftp://x").is_err());
        assert!(UpstreamBase::parse("https://u:p@x").is_err());
        assert!(UpstreamBase::parse("nope").is_err());
    }
}
