//! The Google wires: the Gemini API (`gemini-api`) and Gemini Code Assist (`gemini-oauth`).
//!
//! - **Gemini API**: `{base}/{version}/models/{model}:{generateContent|streamGenerateContent|
//!   countTokens}` with the account's key in `x-goog-api-key`; the model lives in the path, so the
//!   account's model map changes the path, not the body. A client of the Gemini API keeps its
//!   API version (`v1` or `v1beta`); a converted request goes to `v1beta`.
//! - **Code Assist**: `{base}/v1internal:{method}` with the account's Google token as
//!   `Authorization: Bearer`. The body is the Code Assist envelope `{model, project,
//!   user_prompt_id, request}`; the account's project replaces the client's (the client talks to
//!   the relay's Code Assist and never learns which project served it).
//!
//! Neither answers with rate-limit headers to keep; Google's errors are classified by the
//! scheduler's health rules (`RESOURCE_EXHAUSTED` with a `retryDelay` parks the account that long).

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
use std::sync::Arc;

use super::request;
use super::{Call, Credential, Operation, PrepareError, Prepared, Provider, ProviderEnv, ResponseKind, Target, Wire};

/// The Gemini API: the default base URL of `gemini-api` accounts.
pub const DEFAULT_API_BASE: &str = "https://generativelanguage.googleapis.com";
/// Gemini Code Assist: the default base URL of `gemini-oauth` accounts.
pub const DEFAULT_CODE_ASSIST_BASE: &str = "https://cloudcode-pa.googleapis.com";
/// The API version of the Code Assist methods.
pub const CODE_ASSIST_VERSION: &str = "v1internal";

/// The Code Assist project of a `gemini-oauth` account: the configured one, or the one found for
/// the account with `loadCodeAssist`/`onboardUser` (kept with its tokens).
#[derive(Debug, Default)]
pub struct Project {
    current: ArcSwapOption<String>,
}

impl Project {
    pub fn new(known: Option<String>) -> Project {
        Project {
            current: ArcSwapOption::from(known.map(Arc::new)),
        }
    }

    /// The project, when known.
    pub fn get(&self) -> Option<Arc<String>> {
        self.current.load_full()
    }

    /// Keeps a project found for the account.
    pub fn set(&self, project: String) {
        self.current.store(Some(Arc::new(project)));
    }
}

/// The method name of a Gemini operation.
fn method(op: Operation, stream: bool) -> Option<&'static str> {
    Some(match op {
        Operation::GeminiGenerate | Operation::CodeAssistGenerate if stream => "streamGenerateContent",
        Operation::GeminiGenerate | Operation::CodeAssistGenerate => "generateContent",
        Operation::GeminiCountTokens | Operation::CodeAssistCountTokens => "countTokens",
        _ => return None,
    })
}

/// The API version of a Gemini API client's path (`/v1/models/…` or `/v1beta/models/…`);
/// `v1beta` for any other client.
fn api_version(client_path: &str) -> &'static str {
    if client_path.contains("/v1/models/") {
        "v1"
    } else {
        "v1beta"
    }
}

/// The provider of `gemini-api` accounts.
pub struct GeminiApi;

impl Provider for GeminiApi {
    fn wire(&self) -> Wire {
        Wire::GeminiApi
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let Some(method) = method(call.op, call.stream)
            .filter(|_| matches!(call.op, Operation::GeminiGenerate | Operation::GeminiCountTokens))
        else {
            return Err(PrepareError::Request("this account serves Gemini requests only".into()));
        };
        let Credential::Header(name, value) = target.credential else {
            return Err(PrepareError::Account("the account has no API key".into()));
        };
        let model = super::encode_component(
            call.upstream_model
                .strip_prefix("models/")
                .unwrap_or(call.upstream_model),
        );
        let path = format!("/{}/models/{model}:{method}", api_version(call.client.uri.path()));
        let path = target.base.path_and_query(&path, call.query);
        let head = head(call, &path, target, (name.clone(), value.clone()))?;
        Ok(Prepared {
            head,
            body: call.body.clone(),
            response: response_kind(call.op, ResponseKind::Gemini),
            wire_model: None,
        })
    }
}

/// The provider of `gemini-oauth` accounts.
pub struct CodeAssist;

impl Provider for CodeAssist {
    fn wire(&self) -> Wire {
        Wire::CodeAssist
    }

    fn prepare(&self, _env: &ProviderEnv, call: &Call<'_>, target: &Target<'_>) -> Result<Prepared, PrepareError> {
        let Some(method) = method(call.op, call.stream).filter(|_| {
            matches!(
                call.op,
                Operation::CodeAssistGenerate | Operation::CodeAssistCountTokens
            )
        }) else {
            return Err(PrepareError::Request("this account serves Gemini requests only".into()));
        };
        let (Some(live), Credential::GoogleOAuth(..)) = (target.live, target.credential) else {
            return Err(PrepareError::Account("the account has no usable Google token".into()));
        };
        // countTokens names no project.
        let body = match (call.op, target.project) {
            (Operation::CodeAssistGenerate, Some(p)) => crate::wire::json::set_top_string(call.body, "project", p),
            (Operation::CodeAssistGenerate, None) => {
                return Err(PrepareError::Account("the account has no Code Assist project".into()));
            }
            _ => call.body.clone(),
        };
        let path = target
            .base
            .path_and_query(&format!("/{CODE_ASSIST_VERSION}:{method}"), call.query);
        let mut head = head(call, &path, target, (http::header::AUTHORIZATION, live.clone()))?;
        head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        Ok(Prepared {
            head,
            body,
            response: response_kind(call.op, ResponseKind::CodeAssist),
            wire_model: None,
        })
    }
}

/// How the answer to `op` reads: counting tokens answers alike on both wires.
fn response_kind(op: Operation, generate: ResponseKind) -> ResponseKind {
    if op.counts_tokens() {
        ResponseKind::GeminiCount
    } else {
        generate
    }
}

fn head(
    call: &Call<'_>,
    path: &str,
    target: &Target<'_>,
    auth: (HeaderName, HeaderValue),
) -> Result<pingora::http::RequestHeader, PrepareError> {
    let mut head = request::upstream_request(
        call.client,
        path,
        &target.base.host_header,
        Some(&auth),
        call.body.len(),
    )?;
    // A converted request's client may have sent another content type, or none.
    head.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    Ok(head)
}

/// The credential header of a `gemini-api` account.
pub fn api_key_header(api_key: &str) -> Result<(HeaderName, HeaderValue), String> {
    let mut v = HeaderValue::from_str(api_key.trim())
        .map_err(|_| "the API key contains characters not allowed in a header".to_string())?;
    v.set_sensitive(true);
    Ok((HeaderName::from_static("x-goog-api-key"), v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn call<'a>(client: &'a pingora::http::RequestHeader, body: &'a Bytes, op: Operation, stream: bool) -> Call<'a> {
        Call {
            op,
            client,
            query: stream.then_some("alt=sse"),
            body,
            upstream_model: "gemini-2.5-pro",
            stream,
        }
    }

    #[test]
    fn gemini_api_paths_keep_the_clients_version_and_carry_the_key() {
        let base = super::super::UpstreamBase::parse("http://127.0.0.1:9/g").unwrap();
        let (n, v) = api_key_header("AIza-up").unwrap();
        let cred = Credential::Header(n, v);
        let target = Target {
            base: &base,
            credential: &cred,
            live: None,
            project: None,
        };
        let body = Bytes::from_static(br#"{"contents":[]}"#);
        let env = ProviderEnv {
            oauth_beta: String::new(),
            bedrock_models: Default::default(),
        };
        let mut client = pingora::http::RequestHeader::build(
            "POST",
            b"/gemini/v1/models/gemini-x:streamGenerateContent?alt=sse",
            None,
        )
        .unwrap();
        client.insert_header("x-goog-api-key", "cr_client").unwrap();
        let p = GeminiApi
            .prepare(&env, &call(&client, &body, Operation::GeminiGenerate, true), &target)
            .unwrap();
        assert_eq!(
            p.head.uri.to_string(),
            "/g/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(p.head.headers["x-goog-api-key"], "AIza-up");
        let client = pingora::http::RequestHeader::build("POST", b"/openai/v1/chat/completions", None).unwrap();
        let p = GeminiApi
            .prepare(
                &env,
                &call(&client, &body, Operation::GeminiCountTokens, false),
                &target,
            )
            .unwrap();
        assert_eq!(p.head.uri.to_string(), "/g/v1beta/models/gemini-2.5-pro:countTokens");
        assert!(
            GeminiApi
                .prepare(
                    &env,
                    &call(&client, &body, Operation::CodeAssistGenerate, false),
                    &target
                )
                .is_err()
        );
    }
}
